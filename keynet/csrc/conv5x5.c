/* Key.Net's learned convolution (5x5, 8 output channels, bias and ReLU) as a hand-written kernel.
 *
 * One pixel's 8 output channels fill one 8-float vector, so no lane multiplies a zero weight (oneDNN
 * runs 8 channels in 16-float vectors, directly or on column pairs: see keynet/native.py). A block
 * of P pixels of a row keeps its P accumulators in registers for the whole sum: for each kernel row
 * and input channel, the five kernel columns' weight vectors are loaded once and each input value is
 * broadcast once and multiplied into the (up to five) pixels that read it. With P = 24 that needs
 * 30 vector registers, which AVX-512's 32 provide for 8-float (ymm) vectors.
 *
 * Layouts (float32, channels last):
 *   src    (h + 4) rows of (w + 4) pixels x c channels, row stride src_stride floats: the input with
 *          a border of 2 pixels on each side holding the convolution's zero padding.
 *   weight (5, 5, c, 8): weight[ky][kx][ci][o].
 *   dst    h rows of w pixels x 8, row stride dst_stride floats.
 */
#include <Python.h>
#include <immintrin.h>

#define BLOCK 24
#define SMALL_BLOCK 4

static inline __attribute__((always_inline)) void
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

/* One output pixel, for rows narrower than SMALL_BLOCK. */
static void conv_pixel(const float *src, long src_stride, int c, const float *weight, const float *bias, float *dst) {
    for (int o = 0; o < 8; o++) {
        float s = bias[o];
        for (int ky = 0; ky < 5; ky++)
            for (int kx = 0; kx < 5; kx++)
                for (int ci = 0; ci < c; ci++) s += src[ky * src_stride + kx * c + ci] * weight[((ky * 5 + kx) * c + ci) * 8 + o];
        dst[o] = s > 0.0f ? s : 0.0f;
    }
}

void keynet_conv5x5_relu8(const float *src, long src_stride, int h, int w, int c, const float *weight,
                          const float *bias, float *dst, long dst_stride) {
    const __m256 b = _mm256_loadu_ps(bias);
    for (int y = 0; y < h; y++) {
        const float *in = src + y * src_stride;
        float *out = dst + y * dst_stride;
        int x = 0;
        if (w >= BLOCK) {
            /* full blocks, then one block ending at the last pixel (it recomputes a few pixels) */
            for (; x + BLOCK <= w; x += BLOCK) conv_block(in + x * c, src_stride, c, weight, b, out + x * 8, BLOCK);
            if (x < w) conv_block(in + (w - BLOCK) * c, src_stride, c, weight, b, out + (w - BLOCK) * 8, BLOCK);
        } else if (w >= SMALL_BLOCK) {
            for (; x + SMALL_BLOCK <= w; x += SMALL_BLOCK)
                conv_block(in + x * c, src_stride, c, weight, b, out + x * 8, SMALL_BLOCK);
            if (x < w) conv_block(in + (w - SMALL_BLOCK) * c, src_stride, c, weight, b, out + (w - SMALL_BLOCK) * 8, SMALL_BLOCK);
        } else {
            for (; x < w; x++) conv_pixel(in + x * c, src_stride, c, weight, bias, out + x * 8);
        }
    }
}

/* An empty Python module, so that the library is found and imported as keynet._conv5x5; the kernel
 * is called through ctypes, which releases the GIL during the call. */
static struct PyModuleDef conv5x5_module = {PyModuleDef_HEAD_INIT, "_conv5x5", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__conv5x5(void) { return PyModule_Create(&conv5x5_module); }
