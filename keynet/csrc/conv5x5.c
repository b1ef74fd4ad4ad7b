/* Key.Net's learned convolution (5x5, 8 output channels, bias and ReLU) as a hand-written kernel.
 *
 * One pixel's 8 output channels fill one 8-float vector, so no lane multiplies a zero weight (oneDNN
 * runs 8 channels in 16-float vectors, directly or on column pairs: see keynet/native.py). A block
 * of P pixels of a row keeps its P accumulators in registers for the whole sum: for each kernel row
 * and input channel, the five kernel columns' weight vectors are loaded once and each input value is
 * broadcast once and multiplied into the (up to five) pixels that read it. With P = 24 that needs
 * 30 vector registers, which AVX-512's 32 provide for 8-float (ymm) vectors. A row is covered by
 * blocks of 24 pixels (4 in rows narrower than 24), the last block ending at the row's last pixel
 * and recomputing a few; rows narrower than 4 pixels are computed on a zero-extended copy.
 *
 * Layouts (float32, channels last):
 *   src    (h + 4) rows of (w + 4) pixels x c channels, row stride src_stride floats: the input with
 *          a border of 2 pixels on each side holding the convolution's zero padding.
 *   weight (5, 5, c, 8): weight[ky][kx][ci][o].
 *   dst    h rows of w pixels x 8, row stride dst_stride floats.
 * c is at most MAX_CHANNELS. The kernels use AVX-512 (F, VL, BW, BF16) instructions: call them only on
 * CPUs that have them. The rest of the file (the module's init, run on import) is compiled for the
 * baseline instruction set.
 */
#include <Python.h>
#include <immintrin.h>

#define KERNEL __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16,fma")))
#define BLOCK 24
#define SMALL_BLOCK 4
#define MAX_CHANNELS 16 /* input channels (the callers check) */

static inline __attribute__((always_inline)) KERNEL void
conv_block(const float *src, long src_stride, int c, const float *weight, __m256 bias, float *dst, const int p) {
    __m256 acc[BLOCK];
#pragma GCC unroll 24
    for (int i = 0; i < p; i++) acc[i] = bias;
    for (int ky = 0; ky < 5; ky++) {
        const float *row = src + ky * src_stride;
        for (int ci = 0; ci < c; ci++) {
            const float *w = weight + (ky * 5 * c + ci) * 8;  /* weight[ky][kx][ci], kx stride c * 8 */
            const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + c * 8), w2 = _mm256_loadu_ps(w + 2 * c * 8),
                         w3 = _mm256_loadu_ps(w + 3 * c * 8), w4 = _mm256_loadu_ps(w + 4 * c * 8);
#pragma GCC unroll 28
            for (int q = 0; q < p + 4; q++) {  /* input column q is read by output pixels q - kx */
                const __m256 v = _mm256_broadcast_ss(row + q * c + ci);
                if (q < p) acc[q] = _mm256_fmadd_ps(v, w0, acc[q]);
                if (q >= 1 && q - 1 < p) acc[q - 1] = _mm256_fmadd_ps(v, w1, acc[q - 1]);
                if (q >= 2 && q - 2 < p) acc[q - 2] = _mm256_fmadd_ps(v, w2, acc[q - 2]);
                if (q >= 3 && q - 3 < p) acc[q - 3] = _mm256_fmadd_ps(v, w3, acc[q - 3]);
                if (q >= 4 && q - 4 < p) acc[q - 4] = _mm256_fmadd_ps(v, w4, acc[q - 4]);
            }
        }
    }
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 24
    for (int i = 0; i < p; i++) _mm256_storeu_ps(dst + i * 8, _mm256_max_ps(acc[i], zero));
}

/* A kernel's rows, covered by blocks as the header says, for either element type. The block width
 * is passed as a literal, so that block_fn is compiled for it. Uses the kernels' parameters by name. */
#define CONV_ROWS(elem, block_fn)                                                                           \
    const __m256 b = _mm256_loadu_ps(bias);                                                                 \
    const int p = w >= BLOCK ? BLOCK : SMALL_BLOCK;                                                         \
    for (int y = 0; y < h; y++) {                                                                           \
        const elem *in = src + y * src_stride;                                                              \
        elem *out = dst + y * dst_stride;                                                                   \
        if (w < p) {                                                                                        \
            elem padded_in[5 * (SMALL_BLOCK + 4) * MAX_CHANNELS] = {0}, tmp[SMALL_BLOCK * 8];               \
            for (int ky = 0; ky < 5; ky++)                                                                  \
                __builtin_memcpy(padded_in + ky * (SMALL_BLOCK + 4) * c, in + ky * src_stride,              \
                                 (w + 4) * c * sizeof *in);                                                 \
            block_fn(padded_in, (SMALL_BLOCK + 4) * c, c, weight, b, tmp, SMALL_BLOCK);                     \
            __builtin_memcpy(out, tmp, w * 8 * sizeof *out);                                                \
            continue;                                                                                       \
        }                                                                                                   \
        for (int x = 0; x < w; x += p) {                                                                    \
            const int x0 = x + p <= w ? x : w - p;                                                          \
            if (p == BLOCK) block_fn(in + x0 * c, src_stride, c, weight, b, out + x0 * 8, BLOCK);           \
            else block_fn(in + x0 * c, src_stride, c, weight, b, out + x0 * 8, SMALL_BLOCK);                \
        }                                                                                                   \
    }

KERNEL void keynet_conv5x5_relu8(const float *src, long src_stride, int h, int w, int c, const float *weight,
                                 const float *bias, float *dst, long dst_stride) {
    CONV_ROWS(float, conv_block)
}

/* The same convolution on bfloat16 maps and features (AVX512-BF16): each instruction multiplies a
 * pair of input channels into the 8 outputs and adds both products to float32 sums; the outputs
 * are rounded to bfloat16 (to nearest even). c is even; weight (5, 5, c / 2, 8, 2):
 * weight[ky][kx][pair][o][k] is the weight of input channel 2 pair + k for output o. Layouts as
 * above, in 16-bit elements. */
static inline __attribute__((always_inline)) KERNEL void
conv_block_bf16(const unsigned short *src, long src_stride, int c, const unsigned short *weight, __m256 bias,
                unsigned short *dst, const int p) {
    __m256 acc[BLOCK];
#pragma GCC unroll 24
    for (int i = 0; i < p; i++) acc[i] = bias;
    for (int ky = 0; ky < 5; ky++) {
        const unsigned short *row = src + ky * src_stride;
        for (int ci = 0; ci < c; ci += 2) {
            const unsigned short *w = weight + (ky * 5 * c + ci) * 8;  /* kx stride c * 8 */
            const __m256bh w0 = (__m256bh)_mm256_loadu_si256((const __m256i *)w),
                           w1 = (__m256bh)_mm256_loadu_si256((const __m256i *)(w + c * 8)),
                           w2 = (__m256bh)_mm256_loadu_si256((const __m256i *)(w + 2 * c * 8)),
                           w3 = (__m256bh)_mm256_loadu_si256((const __m256i *)(w + 3 * c * 8)),
                           w4 = (__m256bh)_mm256_loadu_si256((const __m256i *)(w + 4 * c * 8));
#pragma GCC unroll 28
            for (int q = 0; q < p + 4; q++) {
                int pair;
                __builtin_memcpy(&pair, row + q * c + ci, sizeof pair);
                const __m256bh v = (__m256bh)_mm256_set1_epi32(pair);
                if (q < p) acc[q] = _mm256_dpbf16_ps(acc[q], v, w0);
                if (q >= 1 && q - 1 < p) acc[q - 1] = _mm256_dpbf16_ps(acc[q - 1], v, w1);
                if (q >= 2 && q - 2 < p) acc[q - 2] = _mm256_dpbf16_ps(acc[q - 2], v, w2);
                if (q >= 3 && q - 3 < p) acc[q - 3] = _mm256_dpbf16_ps(acc[q - 3], v, w3);
                if (q >= 4 && q - 4 < p) acc[q - 4] = _mm256_dpbf16_ps(acc[q - 4], v, w4);
            }
        }
    }
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 24
    for (int i = 0; i < p; i++)
        _mm_storeu_si128((__m128i *)(dst + i * 8), (__m128i)_mm256_cvtneps_pbh(_mm256_max_ps(acc[i], zero)));
}

KERNEL void keynet_conv5x5_relu8_bf16(const unsigned short *src, long src_stride, int h, int w, int c,
                                      const unsigned short *weight, const float *bias, unsigned short *dst,
                                      long dst_stride) {
    CONV_ROWS(unsigned short, conv_block_bf16)
}

/* An empty Python module, so that the library is found and imported as keynet._conv5x5; the kernel
 * is called through ctypes, which releases the GIL during the call. */
static struct PyModuleDef conv5x5_module = {PyModuleDef_HEAD_INIT, "_conv5x5", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__conv5x5(void) { return PyModule_Create(&conv5x5_module); }
