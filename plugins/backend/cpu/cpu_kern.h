/* SIMD kernels of the cpu backend, compiled once per tier.
 *
 * cpu.c includes this file twice, each time inside a `#pragma GCC target`
 * region, with
 *   CPU_TIER 1: AVX2 + FMA + F16C                    K(x) = x##_avx2
 *   CPU_TIER 2: the same plus AVX-512 F/BW/VL/VNNI   K(x) = x##_vnni
 * One source keeps the tiers identical except for the u8 x s8 dot step
 * (vpdpbusd, or vpmaddubsw + vpmaddwd on plain AVX2) and the register tile
 * sizes (AVX-512VL gives 32 ymm registers, AVX2 16). There is deliberately no
 * include guard.
 *
 * Quantized matmul (q8_0 / q4_0 weights x q8_0 activations). Two kernels:
 *
 * - tile: reads weights packed (cpu.c, "packed weights"): per group of four
 *   rows, chunks of 16 blocks in a "lane" layout in which 32-bit lane j of
 *   each step holds four quants of block j, then the chunk's fp16 scales;
 *   activations are packed the same way (cpu_qpack, CPU_QL_LANES). One int32
 *   vector accumulates 16 blocks (8 per ymm on AVX2), so the float conversion
 *   and scaling happen once per chunk instead of once per block, and the
 *   integer dot is nearly all the work. Matrices packed at load
 *   (prepare_weight) are read as they are for every token count, one
 *   sequential stream per row group, prefetched ahead; matrices left in the
 *   GGUF layout are packed one row group at a time into scratch that stays
 *   in L1 while every token of the tile streams past (4+ tokens).
 *
 * - direct (1..3 tokens of a matrix in the GGUF layout, pack_weights off):
 *   reads the weight rows as they lie in the GGUF, four rows at a time; per
 *   block an exact int32 dot in 8 lanes, converted and scaled by d_w * d_a.
 *   For q4_0 the VNNI tier has a 512-bit version (qdirect_z) that permutes
 *   64-byte windows of the rows.
 *
 * The u8 x s8 multiply needs one unsigned operand. The weights are made
 * unsigned: q4_0 nibbles are already (value + 8); q8_0 quants get +128 (xor
 * 0x80) on the VNNI tier. The extra m * sum(a) per block (m = 8 or 128) is
 * taken off in float as d_w * cf with cf = m * d_a * sum(a) precomputed per
 * activation block. Plain AVX2 cannot do that for q8_0 (vpmaddubsw would
 * saturate at 255 * 127 * 2), so it multiplies |w| by a with w's sign moved
 * onto a instead (mode CPU_QM_Q8_SIGN, cf = 0).
 */

#if CPU_TIER == 2
#define KF_C 4 /* tokens per float microkernel: 16 accumulators + 8 operands */
#else
#define KF_C 2 /* 8 accumulators + 6 operands fit AVX2's 16 registers */
#endif

CPU_INLINE float K(hsum)(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* acc + sum of 4 adjacent u8 * s8 products, per 32-bit lane. */
CPU_INLINE __m256i K(dpbusd)(__m256i acc, __m256i u, __m256i s) {
#if CPU_TIER == 2
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  /* pairs of products fit int16 for every operand this file passes in */
  const __m256i p = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/* The 32 quants of one weight block, in element order, in the mode's form. */
CPU_INLINE __m256i K(wload)(const int mode, const uint8_t *blk) {
  if (mode == CPU_QM_Q4) {
    /* element j < 16 is the low nibble of byte j, j + 16 the high one: put
     * the 16 bytes in both halves and shift the upper half down by 4 */
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(blk + 2)));
    const __m256i sh = _mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(sh, _mm256_set1_epi8(0x0f));
  }
  const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 2));
  if (mode == CPU_QM_Q8_XOR) return _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
  return v;
}

/* The fp16 scales of n (1..8) consecutive blocks as floats, 0 past n. */
CPU_INLINE __m256 K(scales8)(const uint8_t *blk, size_t bbytes, int n) {
  if (n == 8) {
    __m128i h = _mm_cvtsi32_si128(cpu_rd16(blk));
    h = _mm_insert_epi16(h, cpu_rd16(blk + 1 * bbytes), 1);
    h = _mm_insert_epi16(h, cpu_rd16(blk + 2 * bbytes), 2);
    h = _mm_insert_epi16(h, cpu_rd16(blk + 3 * bbytes), 3);
    h = _mm_insert_epi16(h, cpu_rd16(blk + 4 * bbytes), 4);
    h = _mm_insert_epi16(h, cpu_rd16(blk + 5 * bbytes), 5);
    h = _mm_insert_epi16(h, cpu_rd16(blk + 6 * bbytes), 6);
    h = _mm_insert_epi16(h, cpu_rd16(blk + 7 * bbytes), 7);
    return _mm256_cvtph_ps(h);
  }
  uint16_t h[8] = {0};
  for (int j = 0; j < n; j++) h[j] = (uint16_t)cpu_rd16(blk + (size_t)j * bbytes);
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* ---- activations: q8_0 quantization ---------------------------------------
 * One block of 32 floats, bit for bit the quant plugin's reference quantizer
 * (llama.cpp's: amax by MAX-style comparisons, d = amax / 127, id = 1 / d,
 * q = x * id rounded half away from zero as v - trunc(v) >= 0.5, fp16 d by
 * round to nearest even): the same IEEE operations, 8 lanes at a time. For
 * finite x, max is order-independent and |x * id| < 127.5, so the saturating
 * packs never saturate. A block holding a NaN or an infinity returns 0 and
 * the caller uses the reference itself. *sum: the sum of the quants. */
static int K(q8_block)(const float *x, int8_t *qs, uint16_t *h, int *sum) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(INFINITY);
  __m256 v[4], mx = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  CPU_UNROLL
  for (int i = 0; i < 4; i++) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    const __m256 a = _mm256_and_ps(v[i], absm);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ)); /* NaN or inf */
    mx = _mm256_max_ps(mx, a);
  }
  if (_mm256_movemask_ps(bad)) return 0;
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float d = amax / 127;
  const float id = d ? 1.0f / d : 0.0f;
  *h = (uint16_t)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f), nhalf = _mm256_set1_ps(-0.5f);
  __m256i qi[4], s = _mm256_setzero_si256();
  CPU_UNROLL
  for (int i = 0; i < 4; i++) {
    const __m256 p = _mm256_mul_ps(v[i], vid);
    __m256i t = _mm256_cvttps_epi32(p);
    const __m256 f = _mm256_sub_ps(p, _mm256_cvtepi32_ps(t));
    t = _mm256_sub_epi32(t, _mm256_castps_si256(_mm256_cmp_ps(f, half, _CMP_GE_OQ)));
    t = _mm256_add_epi32(t, _mm256_castps_si256(_mm256_cmp_ps(f, nhalf, _CMP_LE_OQ)));
    qi[i] = t;
    s = _mm256_add_epi32(s, t);
  }
  /* packs interleave the 128-bit lanes: dword j of the result holds quants
   * of vector j % 4 (low half for j < 4); put them back in element order */
  const __m256i b8 = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]),
                                        _mm256_packs_epi32(qi[2], qi[3]));
  _mm256_storeu_si256((__m256i *)qs,
                      _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  *sum = _mm_cvtsi128_si32(s4);
  return 1;
}

/* ---- quantized: direct ---------------------------------------------------
 * out[t0 + c][r] for CPU_QR rows (w[r], padded by repeating the last row;
 * only nr are stored) and C tokens. `o` points at column row0 of out. */
CPU_INLINE void K(qdirect)(const int mode, const int C, const uint8_t *const *w, int64_t nb,
                           size_t bbytes, const struct cpu_qact *A, int64_t t0, float *o,
                           int64_t ldo, int nr, size_t pf) {
  __m256 acc[CPU_QR][3];
  CPU_UNROLL
  for (int r = 0; r < CPU_QR; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
  const int8_t *aq[3];
  const float *ada[3], *acf[3];
  CPU_UNROLL
  for (int c = 0; c < C; c++) {
    aq[c] = A->q + (size_t)(t0 + c) * A->qstride;
    ada[c] = A->da + (t0 + c) * A->nbp;
    acf[c] = A->cf + (t0 + c) * A->nbp;
  }
  for (int64_t g = 0; g < nb; g += 8) {
    const int n = nb - g < 8 ? (int)(nb - g) : 8;
    /* Each row is a short stream (a few KiB), too short for the hardware
     * prefetcher to ramp up before it ends, so a matvec from DRAM ran at 40%
     * of the read bandwidth. Software prefetch of the same blocks of the
     * next group of rows, pf bytes on, keeps the loads in flight. */
    CPU_UNROLL
    for (int r = 0; r < CPU_QR; r++)
      for (size_t off = 0; off < 8 * bbytes; off += 64)
        _mm_prefetch((const char *)(w[r] + pf + g * bbytes + off), _MM_HINT_T0);
    /* d_w * d_a per (row, token, block), read back one lane at a time with
     * broadcast loads (load ports are idle here; shuffle ports are not) */
    float dd[CPU_QR][3][8] __attribute__((aligned(32)));
    CPU_UNROLL
    for (int r = 0; r < CPU_QR; r++) {
      const __m256 dw = K(scales8)(w[r] + g * bbytes, bbytes, n);
      CPU_UNROLL
      for (int c = 0; c < C; c++) {
        _mm256_store_ps(dd[r][c], _mm256_mul_ps(dw, _mm256_loadu_ps(ada[c] + g)));
        acc[r][c] = _mm256_fnmadd_ps(dw, _mm256_loadu_ps(acf[c] + g), acc[r][c]);
      }
    }
    for (int j = 0; j < n; j++) {
      __m256i wv[CPU_QR], aw[CPU_QR];
      CPU_UNROLL
      for (int r = 0; r < CPU_QR; r++) {
        wv[r] = K(wload)(mode, w[r] + (g + j) * bbytes);
        aw[r] = mode == CPU_QM_Q8_SIGN ? _mm256_abs_epi8(wv[r]) : wv[r];
      }
      CPU_UNROLL
      for (int c = 0; c < C; c++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(aq[c] + (g + j) * 32));
        CPU_UNROLL
        for (int r = 0; r < CPU_QR; r++) {
          const __m256i s = mode == CPU_QM_Q8_SIGN ? _mm256_sign_epi8(a, wv[r]) : a;
          const __m256i p = K(dpbusd)(_mm256_setzero_si256(), aw[r], s);
          acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&dd[r][c][j]),
                                      acc[r][c]);
        }
      }
    }
  }
  CPU_UNROLL
  for (int r = 0; r < nr; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) o[(t0 + c) * ldo + r] = K(hsum)(acc[r][c]);
}

#if CPU_TIER == 2
/* ---- quantized: direct, 512-bit, q4_0 (VNNI tier) -----------------------------
 * qdirect spends ~10 instructions per (row, q4_0 block) of 18 bytes: the
 * nibble unpacking, the int32 dot, its float conversion, the scale load and
 * the FMA all happen once per block, and the 8 fp16 scales of a group are
 * gathered with scalar loads. That made q4_0 decode compute-bound (~15 GB/s
 * per thread even from L2). This kernel works on 64-byte windows of the row
 * as it lies in the GGUF: one vpermt2w per two windows picks four blocks'
 * quants into one zmm, another picks the group's 8 scales (block offsets are
 * multiples of 18 bytes, even, so word permutes of AVX-512BW suffice); one
 * and/shift/and unpacks the four blocks' nibbles and two vpdpbusd dot them.
 * (For q8_0 the same scheme, two blocks per zmm, measured no faster than
 * qdirect: 34-byte blocks leave qdirect less per-block overhead per byte.)
 *
 * The activations are packed to match (cpu_qpack, CPU_QL_Z4): per quad of
 * blocks, [the 4 blocks' elements 0..15][their elements 16..31], so that the
 * low and high nibbles meet their activations. The weights' +8 offset times
 * the activations is taken off in int32, exactly: the dpbusd accumulator
 * starts at corr = -8 * (sum of the 8 activations feeding that lane). A
 * group is 8 blocks; its 8 values d_w * d_a are spread to the 4 lanes of each
 * block with one vpermps per quad. */

/* vpermt2w word indices, windows being 64 bytes from the group's first byte:
 * quad 0 (blocks 0-3) from windows 0, 1; quad 1 from windows 1, 2; the
 * group's 8 scales from windows 0, 1. */
static const uint16_t K(zi_q4)[2][32] __attribute__((aligned(64))) = {
    {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17,
     19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31, 32, 33, 34, 35},
    {5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21,
     23, 24, 25, 26, 27, 28, 29, 30, 32, 33, 34, 35, 36, 37, 38, 39}};
static const uint16_t K(zi_s4)[32] __attribute__((aligned(64))) = {0, 9, 18, 27, 36, 45, 54, 63};
/* vpermps indices spreading the 8 scales to 4 lanes per block of quad q */
static const int32_t K(zi_e4)[2][16] __attribute__((aligned(64))) = {
    {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
    {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7}};

#define CPU_ZI(t) _mm512_load_si512((const void *)(t))

/* 64 bytes at p; with `masked`, only the first `avail` (may be <= 0) are
 * read, the rest are 0: a masked load does not fault past the buffer. */
CPU_INLINE __m512i K(zload)(const int masked, const uint8_t *p, int64_t avail) {
  if (!masked || avail >= 64) return _mm512_loadu_si512((const void *)p);
  if (avail <= 0) return _mm512_setzero_si512();
  return _mm512_maskz_loadu_epi8(~(__mmask64)0 >> (64 - avail), p);
}

/* One group of 8 blocks (from block g) of CPU_QR rows and C tokens into acc.
 * avail: bytes of each row from the group's first byte on. */
CPU_INLINE void K(qdz_group)(const int C, const int masked, const uint8_t *const *w, int64_t g,
                             int64_t avail, size_t pf, const int8_t *const *aq,
                             const int32_t *const *ac, const float *const *ada,
                             __m512 acc[CPU_QR][3]) {
  CPU_UNROLL
  for (int r = 0; r < CPU_QR; r++) {
    const uint8_t *base = w[r] + g * 18;
    /* see qdirect: the rows are short streams; keep the next rows' loads in
     * flight */
    CPU_UNROLL
    for (int i = 0; i < 3; i++) _mm_prefetch((const char *)(base + pf + 64 * i), _MM_HINT_T0);
    __m512i z[3];
    CPU_UNROLL
    for (int i = 0; i < 3; i++) z[i] = K(zload)(masked, base + 64 * i, avail - 64 * i);
    const __m256 dw = _mm256_cvtph_ps(
        _mm512_castsi512_si128(_mm512_permutex2var_epi16(z[0], CPU_ZI(K(zi_s4)), z[1])));
    __m512 dd[3];
    CPU_UNROLL
    for (int c = 0; c < C; c++)
      dd[c] = _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(ada[c] + g)));
    CPU_UNROLL
    for (int q = 0; q < 2; q++) {
      const __m512i v = _mm512_permutex2var_epi16(z[q], CPU_ZI(K(zi_q4)[q]), z[q + 1]);
      const __m512i m = _mm512_set1_epi8(0x0f);
      const __m512i lo = _mm512_and_si512(v, m);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
      const int64_t b0 = g + 4 * q;
      CPU_UNROLL
      for (int c = 0; c < C; c++) {
        __m512i p = _mm512_loadu_si512((const void *)(ac[c] + b0 * 4));
        p = _mm512_dpbusd_epi32(p, lo, _mm512_loadu_si512((const void *)(aq[c] + b0 * 32)));
        p = _mm512_dpbusd_epi32(p, hi, _mm512_loadu_si512((const void *)(aq[c] + b0 * 32 + 64)));
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p),
                                    _mm512_permutexvar_ps(CPU_ZI(K(zi_e4)[q]), dd[c]), acc[r][c]);
      }
    }
  }
}

/* out[c][r] for CPU_QR q4_0 rows and C tokens, as qdirect, for activations
 * packed as CPU_QL_Z4. */
CPU_INLINE void K(qdirect_z)(const int C, const uint8_t *const *w, int64_t nb, size_t row_bytes,
                             const struct cpu_qact *A, float *o, int64_t ldo, int nr, size_t pf) {
  __m512 acc[CPU_QR][3];
  CPU_UNROLL
  for (int r = 0; r < CPU_QR; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  const int8_t *aq[3];
  const int32_t *ac[3];
  const float *ada[3];
  CPU_UNROLL
  for (int c = 0; c < C; c++) {
    aq[c] = A->q + (size_t)c * A->qstride;
    ac[c] = A->corr + c * A->nbp * 4;
    ada[c] = A->da + c * A->nbp;
  }
  int64_t g = 0;
  /* the 3 windows reach 48 bytes past the group's 144; only the last groups
   * of a row, whose windows would leave it, need masked loads */
  for (; g < nb && (int64_t)row_bytes - g * 18 >= 3 * 64; g += 8)
    K(qdz_group)(C, 0, w, g, 0, pf, aq, ac, ada, acc);
  for (; g < nb; g += 8)
    K(qdz_group)(C, 1, w, g, (int64_t)row_bytes - g * 18, pf, aq, ac, ada, acc);
  CPU_UNROLL
  for (int r = 0; r < nr; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) o[c * ldo + r] = _mm512_reduce_add_ps(acc[r][c]);
}
#undef CPU_ZI
#endif

/* Rows [r0, r1) of out for all T (1..3) tokens of A. */
static void K(q_direct_rows)(int mode, const uint8_t *wbase, size_t row_bytes, int64_t nb,
                             size_t bbytes, int64_t r0, int64_t r1, const struct cpu_qact *A,
                             int64_t T, float *out, int64_t ldo) {
  for (int64_t r = r0; r < r1; r += CPU_QR) {
    const int nr = r1 - r < CPU_QR ? (int)(r1 - r) : CPU_QR;
    const uint8_t *w[CPU_QR];
    CPU_UNROLL
    for (int i = 0; i < CPU_QR; i++) w[i] = wbase + (size_t)(r + (i < nr ? i : nr - 1)) * row_bytes;
    float *o = out + r;
#define CPU_QD(M, C) K(qdirect)(M, C, w, nb, bbytes, A, 0, o, ldo, nr, CPU_QR * row_bytes)
#if CPU_TIER == 2
#define CPU_QZ(C) K(qdirect_z)(C, w, nb, row_bytes, A, o, ldo, nr, CPU_QR * row_bytes)
    if (mode == CPU_QM_Q4) {
      if (T == 1) CPU_QZ(1);
      else if (T == 2) CPU_QZ(2);
      else CPU_QZ(3);
    } else {
      if (T == 1) CPU_QD(CPU_QM_Q8_XOR, 1);
      else if (T == 2) CPU_QD(CPU_QM_Q8_XOR, 2);
      else CPU_QD(CPU_QM_Q8_XOR, 3);
    }
#undef CPU_QZ
#else
    if (mode == CPU_QM_Q4) {
      if (T == 1) CPU_QD(CPU_QM_Q4, 1);
      else if (T == 2) CPU_QD(CPU_QM_Q4, 2);
      else CPU_QD(CPU_QM_Q4, 3);
    } else {
      if (T == 1) CPU_QD(CPU_QM_Q8_SIGN, 1);
      else if (T == 2) CPU_QD(CPU_QM_Q8_SIGN, 2);
      else CPU_QD(CPU_QM_Q8_SIGN, 3);
    }
#endif
#undef CPU_QD
  }
}

/* ---- quantized: tile -------------------------------------------------------- */

/* 8x8 transpose of 32-bit elements: out[s] lane j = in[j] lane s. */
CPU_INLINE void K(transpose8)(__m256i v[8]) {
  const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
  const __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
  const __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
  const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
  v[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
  v[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
  v[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
  v[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
  v[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
  v[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
  v[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
  v[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/* CPU_QR weight rows (w[r]) into the packed layout (see cpu.c, "packed
 * weights"): ngr chunks of CPU_PG blocks, each [row 0..3 quants][row 0..3
 * fp16 scales]. Step s (0..7) of a row's chunk is 64 bytes whose 32-bit lane
 * j holds quants 4s..4s+3 of block j; q4_0 keeps two steps per 64 bytes,
 * step s (s < 4) in the low nibbles and step s + 4 in the high ones. q8_0
 * quants are stored as the mode wants them (+128 for CPU_QM_Q8_XOR). Blocks
 * from nb on are zeros with scale 0. With pf, it also prefetches the same
 * bytes of the rows pf bytes on (the next row group of a run-time repack:
 * the tiles that follow compute long enough for those loads to land). */
CPU_INLINE void K(qpack_rg)(const int mode, const uint8_t *const *w, int64_t nb, size_t bbytes,
                            int64_t ngr, uint8_t *dst, size_t pf) {
  const size_t qb = mode == CPU_QM_Q4 ? CPU_PQ4 : CPU_PQ8, chunk = CPU_QR * (qb + 2 * CPU_PG);
  CPU_UNROLL
  for (int r = 0; r < CPU_QR; r++) {
    if (pf)
      for (size_t off = 0; off < (size_t)nb * bbytes; off += 64)
        _mm_prefetch((const char *)(w[r] + pf + off), _MM_HINT_T0);
    for (int64_t c = 0; c < ngr; c++) {
      uint8_t *d = dst + (size_t)c * chunk;
      for (int h = 0; h < 2; h++) {
        const int64_t g = c * CPU_PG + h * 8;
        const int n = nb - g >= 8 ? 8 : nb - g > 0 ? (int)(nb - g) : 0;
        __m256i v[8];
        CPU_UNROLL
        for (int j = 0; j < 8; j++)
          v[j] = j < n ? K(wload)(mode, w[r] + (g + j) * bbytes) : _mm256_setzero_si256();
        K(transpose8)(v);
        if (mode == CPU_QM_Q4) {
          /* nibbles are < 16: the 16-bit shift moves no bits across bytes */
          CPU_UNROLL
          for (int s = 0; s < 4; s++)
            _mm256_storeu_si256((__m256i *)(d + r * qb + s * 64 + h * 32),
                                _mm256_or_si256(v[s], _mm256_slli_epi16(v[s + 4], 4)));
        } else {
          CPU_UNROLL
          for (int s = 0; s < 8; s++)
            _mm256_storeu_si256((__m256i *)(d + r * qb + s * 64 + h * 32), v[s]);
        }
      }
      uint16_t sc[CPU_PG];
      for (int j = 0; j < CPU_PG; j++) {
        const int64_t bi = c * CPU_PG + j;
        sc[j] = bi < nb ? (uint16_t)cpu_rd16(w[r] + bi * bbytes) : 0;
      }
      memcpy(d + CPU_QR * qb + (size_t)r * 2 * CPU_PG, sc, sizeof sc);
    }
  }
}

/* out[t0 + c][r] for one packed row group (pw: its first chunk) and C
 * tokens; the activations in the lane layout (cpu_qpack, CPU_QL_LANES). One
 * int32 lane accumulates one block, so the float conversion and the scaling
 * happen once per 8 or 16 blocks, not once per block. */
#if CPU_TIER == 2
/* 512-bit: one chunk is one group of 16 lanes; no lanes need folding. */
CPU_INLINE void K(qtile)(const int mode, const int C, const uint8_t *pw, int64_t ngr,
                         const struct cpu_qact *A, int64_t t0, float *o, int64_t ldo, int nr,
                         const uint8_t *pfp, size_t pfs, size_t pf2) {
  const size_t qb = mode == CPU_QM_Q4 ? CPU_PQ4 : CPU_PQ8, chunk = CPU_QR * (qb + 2 * CPU_PG);
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  __m512 acc[CPU_QR][3];
  CPU_UNROLL
  for (int r = 0; r < CPU_QR; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  const int8_t *aq[3];
  const float *ada[3], *acf[3];
  CPU_UNROLL
  for (int c = 0; c < C; c++) {
    aq[c] = A->q + (size_t)(t0 + c) * A->qstride;
    ada[c] = A->da + (t0 + c) * A->nbp;
    acf[c] = A->cf + (t0 + c) * A->nbp;
  }
  for (int64_t k = 0; k < ngr; k++) {
    const uint8_t *d = pw + (size_t)k * chunk;
    const int64_t g = k * CPU_PG;
    const size_t off = (size_t)g * 32;
    if (pfp)
      for (size_t l = 0; l < pfs; l += 64) {
        _mm_prefetch((const char *)(pfp + (size_t)k * pfs + l), _MM_HINT_T0);
        if (pf2) _mm_prefetch((const char *)(pfp + pf2 + (size_t)k * pfs + l), _MM_HINT_T1);
      }
    /* One token alone has only CPU_QR independent dot chains, each 8
     * vpdpbusd long: latency-bound (q4_0 ran at half the speed of q8_0 from
     * cache). Then odd steps (q4_0: the high nibbles) go to a second
     * accumulator, added at the end of the chunk. For q4_0 with up to 2
     * tokens (registers allow) the high nibbles are not shifted down: masked
     * in place they are 16 x the quant, so their accumulator holds exactly
     * 16 x the dot and one shift per chunk replaces one per step. */
    __m512i ia[CPU_QR][3], ib[CPU_QR][3];
    const int hi16 = mode == CPU_QM_Q4 && C <= 2;
    CPU_UNROLL
    for (int r = 0; r < CPU_QR; r++)
      CPU_UNROLL
      for (int c = 0; c < C; c++) ia[r][c] = ib[r][c] = _mm512_setzero_si512();
    if (mode == CPU_QM_Q4) {
      const __m512i hi4 = _mm512_set1_epi8((char)0xf0);
      CPU_UNROLL
      for (int s = 0; s < 4; s++)
        CPU_UNROLL
        for (int r = 0; r < CPU_QR; r++) {
          const __m512i v = _mm512_loadu_si512((const void *)(d + r * qb + s * 64));
          const __m512i wl = _mm512_and_si512(v, lo4);
          const __m512i wh = hi16 ? _mm512_and_si512(v, hi4)
                                  : _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
          CPU_UNROLL
          for (int c = 0; c < C; c++) {
            const __m512i al = _mm512_loadu_si512((const void *)(aq[c] + off + s * 64));
            const __m512i ah = _mm512_loadu_si512((const void *)(aq[c] + off + (s + 4) * 64));
            if (hi16) {
              ia[r][c] = _mm512_dpbusd_epi32(ia[r][c], wl, al);
              ib[r][c] = _mm512_dpbusd_epi32(ib[r][c], wh, ah);
            } else {
              ia[r][c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ia[r][c], wl, al), wh, ah);
            }
          }
        }
      if (hi16) {
        CPU_UNROLL
        for (int r = 0; r < CPU_QR; r++)
          CPU_UNROLL
          for (int c = 0; c < C; c++)
            ia[r][c] = _mm512_add_epi32(ia[r][c], _mm512_srai_epi32(ib[r][c], 4));
      }
    } else {
      CPU_UNROLL
      for (int s = 0; s < 8; s++) {
        __m512i wv[CPU_QR];
        CPU_UNROLL
        for (int r = 0; r < CPU_QR; r++)
          wv[r] = _mm512_loadu_si512((const void *)(d + r * qb + s * 64));
        CPU_UNROLL
        for (int c = 0; c < C; c++) {
          const __m512i a = _mm512_loadu_si512((const void *)(aq[c] + off + s * 64));
          CPU_UNROLL
          for (int r = 0; r < CPU_QR; r++) {
            if (C == 1 && s % 2)
              ib[r][0] = _mm512_dpbusd_epi32(ib[r][0], wv[r], a);
            else
              ia[r][c] = _mm512_dpbusd_epi32(ia[r][c], wv[r], a);
          }
        }
      }
      if (C == 1) {
        CPU_UNROLL
        for (int r = 0; r < CPU_QR; r++) ia[r][0] = _mm512_add_epi32(ia[r][0], ib[r][0]);
      }
    }
    CPU_UNROLL
    for (int r = 0; r < CPU_QR; r++) {
      const __m512 dw = _mm512_cvtph_ps(
          _mm256_loadu_si256((const __m256i *)(d + CPU_QR * qb + (size_t)r * 2 * CPU_PG)));
      CPU_UNROLL
      for (int c = 0; c < C; c++) {
        const __m512 t = _mm512_fmsub_ps(_mm512_cvtepi32_ps(ia[r][c]), _mm512_loadu_ps(ada[c] + g),
                                         _mm512_loadu_ps(acf[c] + g));
        acc[r][c] = _mm512_fmadd_ps(t, dw, acc[r][c]);
      }
    }
  }
  CPU_UNROLL
  for (int r = 0; r < nr; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) o[(t0 + c) * ldo + r] = _mm512_reduce_add_ps(acc[r][c]);
}
#else
/* 256-bit: each chunk is two groups of 8 lanes, the halves of its steps. */
CPU_INLINE void K(qtile)(const int mode, const int C, const uint8_t *pw, int64_t ngr,
                         const struct cpu_qact *A, int64_t t0, float *o, int64_t ldo, int nr,
                         const uint8_t *pfp, size_t pfs, size_t pf2) {
  const size_t qb = mode == CPU_QM_Q4 ? CPU_PQ4 : CPU_PQ8, chunk = CPU_QR * (qb + 2 * CPU_PG);
  const __m256i lo4 = _mm256_set1_epi8(0x0f);
  __m256 acc[CPU_QR][3];
  CPU_UNROLL
  for (int r = 0; r < CPU_QR; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
  const int8_t *aq[3];
  const float *ada[3], *acf[3];
  CPU_UNROLL
  for (int c = 0; c < C; c++) {
    aq[c] = A->q + (size_t)(t0 + c) * A->qstride;
    ada[c] = A->da + (t0 + c) * A->nbp;
    acf[c] = A->cf + (t0 + c) * A->nbp;
  }
  for (int64_t k = 0; k < ngr; k++) {
    const uint8_t *d = pw + (size_t)k * chunk;
    if (pfp)
      for (size_t l = 0; l < pfs; l += 64) {
        _mm_prefetch((const char *)(pfp + (size_t)k * pfs + l), _MM_HINT_T0);
        if (pf2) _mm_prefetch((const char *)(pfp + pf2 + (size_t)k * pfs + l), _MM_HINT_T1);
      }
    for (int h = 0; h < 2; h++) {
      const int64_t g = k * CPU_PG + h * 8;
      const size_t off = (size_t)k * CPU_PG * 32 + (size_t)h * 32;
      __m256i ia[CPU_QR][3];
      CPU_UNROLL
      for (int r = 0; r < CPU_QR; r++)
        CPU_UNROLL
        for (int c = 0; c < C; c++) ia[r][c] = _mm256_setzero_si256();
      CPU_UNROLL
      for (int s = 0; s < 8; s++) {
        __m256i wv[CPU_QR], aw[CPU_QR];
        CPU_UNROLL
        for (int r = 0; r < CPU_QR; r++) {
          if (mode == CPU_QM_Q4) {
            const __m256i v =
                _mm256_loadu_si256((const __m256i *)(d + r * qb + (s % 4) * 64 + h * 32));
            wv[r] = _mm256_and_si256(s < 4 ? v : _mm256_srli_epi16(v, 4), lo4);
          } else {
            wv[r] = _mm256_loadu_si256((const __m256i *)(d + r * qb + s * 64 + h * 32));
          }
          aw[r] = mode == CPU_QM_Q8_SIGN ? _mm256_abs_epi8(wv[r]) : wv[r];
        }
        CPU_UNROLL
        for (int c = 0; c < C; c++) {
          const __m256i a = _mm256_loadu_si256((const __m256i *)(aq[c] + off + s * 64));
          CPU_UNROLL
          for (int r = 0; r < CPU_QR; r++) {
            const __m256i sa = mode == CPU_QM_Q8_SIGN ? _mm256_sign_epi8(a, wv[r]) : a;
            ia[r][c] = K(dpbusd)(ia[r][c], aw[r], sa);
          }
        }
      }
      /* lane j now holds block g + j's integer dot: scale all 8 at once */
      CPU_UNROLL
      for (int r = 0; r < CPU_QR; r++) {
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(
            (const __m128i *)(d + CPU_QR * qb + (size_t)r * 2 * CPU_PG + (size_t)h * 16)));
        CPU_UNROLL
        for (int c = 0; c < C; c++) {
          const __m256 t = _mm256_fmsub_ps(_mm256_cvtepi32_ps(ia[r][c]),
                                           _mm256_loadu_ps(ada[c] + g), _mm256_loadu_ps(acf[c] + g));
          acc[r][c] = _mm256_fmadd_ps(t, dw, acc[r][c]);
        }
      }
    }
  }
  CPU_UNROLL
  for (int r = 0; r < nr; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) o[(t0 + c) * ldo + r] = K(hsum)(acc[r][c]);
}
#endif

/* The q8_0 mode of this tier's packed and repacked rows. */
#if CPU_TIER == 2
#define CPU_M8 CPU_QM_Q8_XOR
#else
#define CPU_M8 CPU_QM_Q8_SIGN
#endif

/* Rows [r0, r1) (r0 a multiple of CPU_QR) of a q8_0 or q4_0 matrix (mode
 * CPU_QM_Q4 or not) into the packed layout at dst, which holds row group
 * r0 / CPU_QR. Rows past r1 repeat row r1 - 1. */
static void K(q_pack_rows)(int mode, const uint8_t *wbase, size_t row_bytes, int64_t nb,
                           size_t bbytes, int64_t r0, int64_t r1, uint8_t *dst) {
  const int64_t ngr = (nb + CPU_PG - 1) / CPU_PG;
  const size_t rgb = (size_t)ngr * CPU_QR * ((mode == CPU_QM_Q4 ? CPU_PQ4 : CPU_PQ8) + 2 * CPU_PG);
  for (int64_t r = r0; r < r1; r += CPU_QR) {
    const int nr = r1 - r < CPU_QR ? (int)(r1 - r) : CPU_QR;
    const uint8_t *w[CPU_QR];
    for (int i = 0; i < CPU_QR; i++) w[i] = wbase + (size_t)(r + (i < nr ? i : nr - 1)) * row_bytes;
    uint8_t *d = dst + (size_t)((r - r0) / CPU_QR) * rgb;
    if (mode == CPU_QM_Q4)
      K(qpack_rg)(CPU_QM_Q4, w, nb, bbytes, ngr, d, 0);
    else
      K(qpack_rg)(CPU_M8, w, nb, bbytes, ngr, d, 0);
  }
}

/* Rows [r0, r1) of out for tokens [t0, t1) of A (lane layout). With packed
 * set, wbase is the packed matrix (r0 a multiple of CPU_QR); else the rows
 * as they lie in the GGUF, each row group packed into scratch first. */
static void K(q_tile_rows)(int mode, const uint8_t *wbase, size_t row_bytes, int64_t nb,
                           size_t bbytes, int64_t r0, int64_t r1, const struct cpu_qact *A,
                           int64_t t0, int64_t t1, float *out, int64_t ldo, uint8_t *scratch,
                           int packed) {
  const int64_t ngr = A->nbp / CPU_PG;
  const size_t rgb = (size_t)ngr * CPU_QR * ((mode == CPU_QM_Q4 ? CPU_PQ4 : CPU_PQ8) + 2 * CPU_PG);
  for (int64_t r = r0; r < r1; r += CPU_QR) {
    const int nr = r1 - r < CPU_QR ? (int)(r1 - r) : CPU_QR;
    float *o = out + r;
    const uint8_t *pw = wbase + (size_t)(r / CPU_QR) * rgb;
    if (!packed) {
      const uint8_t *w[CPU_QR];
      CPU_UNROLL
      for (int i = 0; i < CPU_QR; i++)
        w[i] = wbase + (size_t)(r + (i < nr ? i : nr - 1)) * row_bytes;
      /* the next row group: with the static schedule mostly this thread's
       * next call (a prefetch past the weights' end does not fault) */
      const size_t pf = CPU_QR * row_bytes;
      if (mode == CPU_QM_Q4)
        K(qpack_rg)(CPU_QM_Q4, w, nb, bbytes, ngr, scratch, pf);
      else
        K(qpack_rg)(CPU_M8, w, nb, bbytes, ngr, scratch, pf);
      pw = scratch;
    }
    /* tiles of 3 tokens; 4 left go as 2 + 2, not 3 + 1: a 1-token tile
     * loads as many weights as a 3-token one (16 sequences: 3,3,3,3,2,2) */
    const int64_t ntile = (t1 - t0) / 3 + ((t1 - t0) % 3 != 0);
    /* Packed weights come from memory. One tile alone streams its row
     * group, prefetching CPU_PF_DIST bytes ahead. With several, each
     * prefetches its share of the next row group (mostly the next this
     * thread computes), so the loads run under all the tiles' arithmetic,
     * not only under the first tile's while the others compute from cache
     * (at 16 tokens a third of the tile time waited on the first tile's
     * prefetches). */
    const size_t chunk = rgb / (size_t)ngr;
    const size_t pfs = ntile > 1 ? (chunk / (size_t)ntile + 63) / 64 * 64 : chunk;
    int64_t tile = 0;
    for (int64_t t = t0, C; t < t1; t += C, tile++) {
      const int64_t left = t1 - t;
      C = left == 4 ? 2 : left < 3 ? left : 3;
      const uint8_t *pfp = !packed ? NULL
                           : ntile > 1 ? pw + rgb + (size_t)tile * (size_t)ngr * pfs
                                       : pw + CPU_PF_DIST;
      const size_t pf2 = ntile > 1 ? 0 : CPU_PF_L2; /* the L2 prefetch: one token only */
#define CPU_QT(M, C) K(qtile)(M, C, pw, ngr, A, t, o, ldo, nr, pfp, pfs, pf2)
      if (mode == CPU_QM_Q4) {
        if (C == 3) CPU_QT(CPU_QM_Q4, 3);
        else if (C == 2) CPU_QT(CPU_QM_Q4, 2);
        else CPU_QT(CPU_QM_Q4, 1);
      } else {
        if (C == 3) CPU_QT(CPU_M8, 3);
        else if (C == 2) CPU_QT(CPU_M8, 2);
        else CPU_QT(CPU_M8, 1);
      }
#undef CPU_QT
    }
  }
}
#undef CPU_M8

/* ---- float weights (f32, f16, bf16) x f32 activations ------------------------ */

CPU_INLINE __m256 K(fload)(const uint32_t type, const uint8_t *p) {
  if (type == STRATA_TYPE_F32) return _mm256_loadu_ps((const float *)(const void *)p);
  const __m128i h = _mm_loadu_si128((const __m128i *)p);
  if (type == STRATA_TYPE_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* bf16 */
}

/* out[t0 + c][r] for CPU_FR rows and C tokens; the tail past a multiple of 8
 * elements is done in scalar. */
CPU_INLINE void K(fkern)(const uint32_t type, const int C, const uint8_t *const *w, int64_t n,
                         const float *x, int64_t ldx, int64_t t0, float *o, int64_t ldo, int nr) {
  const size_t es = type == STRATA_TYPE_F32 ? 4 : 2;
  __m256 acc[CPU_FR][KF_C];
  const float *xc[KF_C];
  CPU_UNROLL
  for (int c = 0; c < C; c++) {
    xc[c] = x + (t0 + c) * ldx;
    CPU_UNROLL
    for (int r = 0; r < CPU_FR; r++) acc[r][c] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 wv[CPU_FR];
    CPU_UNROLL
    for (int r = 0; r < CPU_FR; r++) wv[r] = K(fload)(type, w[r] + k * es);
    CPU_UNROLL
    for (int c = 0; c < C; c++) {
      const __m256 xv = _mm256_loadu_ps(xc[c] + k);
      CPU_UNROLL
      for (int r = 0; r < CPU_FR; r++) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
    }
  }
  CPU_UNROLL
  for (int r = 0; r < nr; r++)
    CPU_UNROLL
    for (int c = 0; c < C; c++) {
      float s = K(hsum)(acc[r][c]);
      for (int64_t kk = k; kk < n; kk++) s += cpu_fload1(type, w[r] + kk * es) * xc[c][kk];
      o[(t0 + c) * ldo + r] = s;
    }
}

static void K(f_rows)(uint32_t type, const uint8_t *wbase, size_t row_bytes, int64_t n, int64_t r0,
                      int64_t r1, const float *x, int64_t ldx, int64_t t0, int64_t t1, float *out,
                      int64_t ldo) {
  for (int64_t r = r0; r < r1; r += CPU_FR) {
    const int nr = r1 - r < CPU_FR ? (int)(r1 - r) : CPU_FR;
    const uint8_t *w[CPU_FR];
    CPU_UNROLL
    for (int i = 0; i < CPU_FR; i++) w[i] = wbase + (size_t)(r + (i < nr ? i : nr - 1)) * row_bytes;
    float *o = out + r;
    for (int64_t t = t0; t < t1; t += KF_C) {
      const int64_t left = t1 - t;
      const int C = left < KF_C ? (int)left : KF_C;
#if CPU_TIER == 2
#define CPU_FK(TY)                                                                                 \
  do {                                                                                             \
    if (C == 4) K(fkern)(TY, 4, w, n, x, ldx, t, o, ldo, nr);                                      \
    else if (C == 3) K(fkern)(TY, 3, w, n, x, ldx, t, o, ldo, nr);                                 \
    else if (C == 2) K(fkern)(TY, 2, w, n, x, ldx, t, o, ldo, nr);                                 \
    else K(fkern)(TY, 1, w, n, x, ldx, t, o, ldo, nr);                                             \
  } while (0)
#else
#define CPU_FK(TY)                                                                                 \
  do {                                                                                             \
    if (C == 2) K(fkern)(TY, 2, w, n, x, ldx, t, o, ldo, nr);                                      \
    else K(fkern)(TY, 1, w, n, x, ldx, t, o, ldo, nr);                                             \
  } while (0)
#endif
      if (type == STRATA_TYPE_F32) CPU_FK(STRATA_TYPE_F32);
      else if (type == STRATA_TYPE_F16) CPU_FK(STRATA_TYPE_F16);
      else CPU_FK(STRATA_TYPE_BF16);
#undef CPU_FK
    }
  }
}

/* ---- attention: one query row, one head --------------------------------------- */

CPU_INLINE __m256 K(kvload)(const uint32_t type, const uint8_t *p) {
  if (type == STRATA_TYPE_F32) return _mm256_loadu_ps((const float *)(const void *)p);
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

CPU_INLINE float K(kvdot)(const uint32_t type, const float *q, const uint8_t *k, int n) {
  const size_t es = type == STRATA_TYPE_F32 ? 4 : 2;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), K(kvload)(type, k + i * es), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), K(kvload)(type, k + (i + 8) * es), a1);
  }
  for (; i + 8 <= n; i += 8)
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), K(kvload)(type, k + i * es), a0);
  float s = K(hsum)(_mm256_add_ps(a0, a1));
  for (; i < n; i++) s += q[i] * cpu_fload1(type, k + i * es);
  return s;
}

CPU_INLINE void K(kvaxpy)(const uint32_t type, float a, const uint8_t *v, float *y, int n) {
  const size_t es = type == STRATA_TYPE_F32 ? 4 : 2;
  const __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, K(kvload)(type, v + i * es), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * cpu_fload1(type, v + i * es);
}

CPU_INLINE void K(attn_t)(const uint32_t kt, const uint32_t vt, const struct cpu_attn *c,
                          const int32_t *bt, const float *q, int kvh, int32_t npos, float *sc,
                          float *out) {
  const int hd = c->head_dim;
  const size_t koff = (size_t)kvh * hd * (kt == STRATA_TYPE_F32 ? 4 : 2);
  const size_t voff = (size_t)kvh * hd * (vt == STRATA_TYPE_F32 ? 4 : 2);
  /* Positions walk the block table block by block: a division per
   * position (p / block_size) cost as much as the dot itself at head_dim 64. */
  const int32_t bs = c->block_size;
  float mx = -INFINITY;
  for (int32_t p0 = 0, b = 0; p0 < npos; p0 += bs, b++) {
    const int32_t n = npos - p0 < bs ? npos - p0 : bs;
    const uint8_t *kb = c->k + (size_t)bt[b] * bs * c->krow + koff;
    for (int32_t j = 0; j < n; j++) {
      const float s = K(kvdot)(kt, q, kb + (size_t)j * c->krow, hd) * c->scale;
      sc[p0 + j] = s;
      mx = s > mx ? s : mx;
    }
  }
  float sum = 0.0f;
  for (int32_t p = 0; p < npos; p++) {
    sc[p] = expf(sc[p] - mx);
    sum += sc[p];
  }
  for (int i = 0; i < hd; i++) out[i] = 0.0f;
  for (int32_t p0 = 0, b = 0; p0 < npos; p0 += bs, b++) {
    const int32_t n = npos - p0 < bs ? npos - p0 : bs;
    const uint8_t *vb = c->v + (size_t)bt[b] * bs * c->vrow + voff;
    for (int32_t j = 0; j < n; j++) K(kvaxpy)(vt, sc[p0 + j], vb + (size_t)j * c->vrow, out, hd);
  }
  const float inv = 1.0f / sum;
  for (int i = 0; i < hd; i++) out[i] *= inv;
}

static void K(attn_one)(const struct cpu_attn *c, const int32_t *bt, const float *q, int kvh,
                        int32_t npos, float *sc, float *out) {
  if (c->ktype == STRATA_TYPE_F32 && c->vtype == STRATA_TYPE_F32)
    K(attn_t)(STRATA_TYPE_F32, STRATA_TYPE_F32, c, bt, q, kvh, npos, sc, out);
  else if (c->ktype == STRATA_TYPE_F16 && c->vtype == STRATA_TYPE_F16)
    K(attn_t)(STRATA_TYPE_F16, STRATA_TYPE_F16, c, bt, q, kvh, npos, sc, out);
  else if (c->ktype == STRATA_TYPE_F32)
    K(attn_t)(STRATA_TYPE_F32, STRATA_TYPE_F16, c, bt, q, kvh, npos, sc, out);
  else
    K(attn_t)(STRATA_TYPE_F16, STRATA_TYPE_F32, c, bt, q, kvh, npos, sc, out);
}

/* ---- attention: one query row, the heads that share one kv head ------------- */

/* e^x, 8 lanes, for the softmax: Cephes' expf (range reduction by ln 2 in
 * two parts, a degree-6 polynomial, the exponent added in the integer
 * domain), within 2 ulp of expf; x is clamped to [-87, 88], so the result
 * is a normal float (a score 87 below the row's maximum weighs 1e-38
 * instead of 0). Written here: no SIMD math library is a dependency, and
 * a scalar expf per position and head cost as much as the dot product. */
CPU_INLINE __m256 K(expv)(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* Lane g: the sum of a[g]'s lanes. */
CPU_INLINE __m256 K(hsum8)(const __m256 *a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* One query row of the G (1..8) heads that share kv head kvh, over the
 * positions [p0, p1): every K and V row is loaded and converted once for all
 * of them (the per-head kernel read each G times), a position's G scores
 * form one vector (lane g: head g; lanes from G on compute zeros nobody
 * reads) and the softmax runs on those vectors. q and out: G rows of
 * head_dim, adjacent; head_dim a multiple of 8; sc: (p1 - p0) x 8 floats.
 * With ml NULL, out is the normalized result; else out is the sum of e^(s -
 * max) v unnormalized and ml[g] = max, ml[8 + g] = sum of e^(s - max), for
 * cpu_attention to merge ranges. G is a constant where it is inlined with
 * one, so the head loops unroll into registers. */
CPU_INLINE void K(attn_g_t)(const uint32_t kt, const uint32_t vt, const int G,
                            const struct cpu_attn *c, const int32_t *bt, const float *q, int kvh,
                            int32_t p0, int32_t p1, float *sc, float *out, float *ml) {
  const int hd = c->head_dim;
  const size_t kes = kt == STRATA_TYPE_F32 ? 4 : 2, ves = vt == STRATA_TYPE_F32 ? 4 : 2;
  const size_t koff = (size_t)kvh * hd * kes, voff = (size_t)kvh * hd * ves;
  const int32_t bs = c->block_size;
  const __m256 scale = _mm256_set1_ps(c->scale);
  __m256 mx = _mm256_set1_ps(-INFINITY);
  /* Rows of a head are a few cache lines each, one cache row (all kv heads)
   * apart, in blocks scattered over the cache: the loads of each position
   * waited on memory (half the attention time at 512 positions). While a
   * block's K rows are dotted, the next block's K rows are prefetched into
   * L1 and its V rows into L2, where the V pass below finds them. Positions
   * walk the block table block by block (a division per position cost as
   * much as the dot at head_dim 64). */
  const size_t kbytes = (size_t)hd * kes, vbytes = (size_t)hd * ves;
  for (int32_t p = p0; p < p1;) {
    const int32_t b = p / bs, j0 = p % bs, n = p1 - p < bs - j0 ? p1 - p : bs - j0;
    const uint8_t *kb = c->k + (size_t)bt[b] * bs * c->krow + koff;
    if (p == p0)
      /* the first block's rows, all at once: the loop below would wait on
       * them a few at a time (at 16 sequences of 16 positions, where no
       * block follows, 40% of the attention time) */
      for (int32_t j = j0; j < j0 + n; j++) {
        const uint8_t *kr = kb + (size_t)j * c->krow;
        const uint8_t *vr = c->v + ((size_t)bt[b] * bs + (size_t)j) * c->vrow + voff;
        for (size_t l = 0; l < kbytes; l += 64) _mm_prefetch((const char *)(kr + l), _MM_HINT_T0);
        for (size_t l = 0; l < vbytes; l += 64) _mm_prefetch((const char *)(vr + l), _MM_HINT_T1);
      }
    if (p + n < p1) {
      const int32_t n1 = p1 - p - n < bs ? p1 - p - n : bs;
      const size_t r1 = (size_t)bt[b + 1] * bs;
      for (int32_t j = 0; j < n1; j++) {
        const uint8_t *kr = c->k + (r1 + (size_t)j) * c->krow + koff;
        const uint8_t *vr = c->v + (r1 + (size_t)j) * c->vrow + voff;
        for (size_t l = 0; l < kbytes; l += 64) _mm_prefetch((const char *)(kr + l), _MM_HINT_T0);
        for (size_t l = 0; l < vbytes; l += 64) _mm_prefetch((const char *)(vr + l), _MM_HINT_T1);
      }
    }
    for (int32_t j = j0; j < j0 + n; j++) {
      const uint8_t *k = kb + (size_t)j * c->krow;
      __m256 a[8];
      CPU_UNROLL
      for (int g = 0; g < 8; g++) a[g] = _mm256_setzero_ps();
      for (int d = 0; d < hd; d += 8) {
        const __m256 kv = K(kvload)(kt, k + (size_t)d * kes);
        CPU_UNROLL
        for (int g = 0; g < G; g++)
          a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)g * hd + d), kv, a[g]);
      }
      const __m256 s = _mm256_mul_ps(K(hsum8)(a), scale);
      _mm256_storeu_ps(sc + (size_t)(p - p0 + j - j0) * 8, s);
      mx = _mm256_max_ps(mx, s);
    }
    p += n;
  }
  __m256 sum = _mm256_setzero_ps();
  for (int32_t p = 0; p < p1 - p0; p++) {
    const __m256 e = K(expv)(_mm256_sub_ps(_mm256_loadu_ps(sc + (size_t)p * 8), mx));
    _mm256_storeu_ps(sc + (size_t)p * 8, e);
    sum = _mm256_add_ps(sum, e);
  }
  float inv[8];
  if (ml) {
    _mm256_storeu_ps(ml, mx);
    _mm256_storeu_ps(ml + 8, sum);
    _mm256_storeu_ps(inv, _mm256_set1_ps(1.0f));
  } else {
    _mm256_storeu_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.0f), sum));
  }
  for (int d = 0; d < hd; d += 8) {
    __m256 o[8];
    CPU_UNROLL
    for (int g = 0; g < 8; g++) o[g] = _mm256_setzero_ps();
    for (int32_t p = p0; p < p1;) {
      const int32_t b = p / bs, j0 = p % bs, n = p1 - p < bs - j0 ? p1 - p : bs - j0;
      const uint8_t *vb = c->v + (size_t)bt[b] * bs * c->vrow + voff + (size_t)d * ves;
      for (int32_t j = j0; j < j0 + n; j++) {
        const __m256 v = K(kvload)(vt, vb + (size_t)j * c->vrow);
        const float *e = sc + (size_t)(p - p0 + j - j0) * 8;
        CPU_UNROLL
        for (int g = 0; g < G; g++) o[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(e + g), v, o[g]);
      }
      p += n;
    }
    CPU_UNROLL
    for (int g = 0; g < G; g++)
      _mm256_storeu_ps(out + (size_t)g * hd + d, _mm256_mul_ps(o[g], _mm256_set1_ps(inv[g])));
  }
}

#define CPU_ATTN_G(KT, VT)                                                                        \
  do {                                                                                            \
    if (G == 8) K(attn_g_t)(KT, VT, 8, c, bt, q, kvh, p0, p1, sc, out, ml);                      \
    else if (G == 4) K(attn_g_t)(KT, VT, 4, c, bt, q, kvh, p0, p1, sc, out, ml);                 \
    else K(attn_g_t)(KT, VT, G, c, bt, q, kvh, p0, p1, sc, out, ml);                             \
  } while (0)

static void K(attn_group)(const struct cpu_attn *c, const int32_t *bt, const float *q, int G,
                          int kvh, int32_t p0, int32_t p1, float *sc, float *out, float *ml) {
  if (c->ktype == STRATA_TYPE_F32 && c->vtype == STRATA_TYPE_F32)
    CPU_ATTN_G(STRATA_TYPE_F32, STRATA_TYPE_F32);
  else if (c->ktype == STRATA_TYPE_F16 && c->vtype == STRATA_TYPE_F16)
    CPU_ATTN_G(STRATA_TYPE_F16, STRATA_TYPE_F16);
  else if (c->ktype == STRATA_TYPE_F32)
    CPU_ATTN_G(STRATA_TYPE_F32, STRATA_TYPE_F16);
  else
    CPU_ATTN_G(STRATA_TYPE_F16, STRATA_TYPE_F32);
}
#undef CPU_ATTN_G

/* ---- row-wise ops ------------------------------------------------------------ */

/* o = silu(g) * u = g / (1 + e^-g) * u; o may alias g or u. A scalar expf
 * per element took 4 ms of an 80 ms step at 16 sequences. */
static void K(swiglu)(const float *g, const float *u, float *o, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = K(expv)(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)),
                                          _mm256_loadu_ps(u + i)));
  }
  for (; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* The sum of squares of x[0..n), accumulated in double (a long row loses
 * bits in float) four lanes at a time. */
static double K(sumsq)(const float *x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)),
                  hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  double l[4];
  _mm256_storeu_pd(l, _mm256_add_pd(a0, a1));
  double ss = (l[0] + l[1]) + (l[2] + l[3]);
  for (; i < n; i++) ss += (double)x[i] * x[i];
  return ss;
}

#undef KF_C
