// Fused, factorised group self-attention for GE-ViT / GSA-Nets on the CPU (forward and backward).
//
// One kernel serves both layers. Per (batch x head) `bh`, output element v, query element g, query
// position x, key element m and neighbour offset j (the k x k window, row-major):
//
//   logit(v, g, m, x, j) = c[g,m,j] + s[g,v,j] + e[g,v,m]
//     c = q_g(x) . k_m(x + d_j)                 content  (all C channels)
//     s = q_g(x)[:P2] . ptab[v, j]              spatial  (rotated row/col encodings, first P2 channels)
//     e = qe[g, idx[v,g,m]](x)                  group    (q_g . E precomputed outside, gathered here)
//   softmax over (m, j) for each (v, g, x); neighbours outside the image are masked out;
//   out(v, x) = sum_{m,j} D[v,m,j] * Psum[v,m,j] * val_m(x + d_j),  Psum = sum_g probs.
//
// Factorisation: with A = exp(c - max_j c) per (g,m), S = exp(s - max_j s) per (g,v) and
// T[g,v,m] = sum_j S A, the normaliser is Z[g,v] = sum_m exp(e + cmax + smax - shift) T and
// Psum[v,m,j] = sum_g W[g,v,m] A[g,m,j] S[g,v,j] with W = exp(e + cmax + smax - shift) / Z: nothing of
// size |G|^3 k^2 is stored; the backward recomputes A, S, W from the inputs. If some T underflows (the
// product A*S loses the joint maximum) the call reports it and the caller falls back to the eager path.
// The lifting layer is the case G = M = 1 (no group term), computed with a direct softmax instead
// (A = 1, S = exp(logit - max), W = 1/Z), which cannot underflow (trained weights do trip the
// factorised guard there).
//
// Layouts (all contiguous; W padded up to Wq, a multiple of TX, with zeros):
//   q    [BH][C][G][H][Wq]        k, v [BH][C][M][H+2r][Wq+2r]   (zero padded by r = K/2)
//   ptab [V][K2][P2]              qe   [BH][G][N][H][Wq]          idx [V][G][M] (int32)
//   out  [BH][C][V][H][Wq]
// Vectorised over TX consecutive query positions of one image row; keys and values are read as
// shifted rows of the padded projections (no window copies). Threads: at::parallel_for (torch's pool).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int TX = 16;  // query positions per tile: one vector of each per-tile quantity

// GCC/Clang vector extensions: one TX-wide vector per (tile, index) keeps every inner loop vectorised
// whatever the compiler's loop heuristics (the build uses -march=native; a 16-float vector is one
// AVX-512 register or two AVX2 registers).
template <typename T> struct VecOf;
template <> struct VecOf<float> {
  typedef float type __attribute__((vector_size(TX * sizeof(float))));
  typedef int32_t itype __attribute__((vector_size(TX * sizeof(int32_t))));
};
template <> struct VecOf<double> {
  typedef double type __attribute__((vector_size(TX * sizeof(double))));
  typedef int64_t itype __attribute__((vector_size(TX * sizeof(int64_t))));
};
template <typename T> using Vec = typename VecOf<T>::type;
typedef uint32_t U32 __attribute__((vector_size(TX * sizeof(uint32_t))));

template <typename T> inline Vec<T> loadu(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T> inline void storeu(T* p, const Vec<T>& v) { std::memcpy(p, &v, sizeof(v)); }
template <typename T> inline Vec<T> splat(T x) { return Vec<T>{} + x; }
template <typename V> inline V vmax(const V& a, const V& b) { return a > b ? a : b; }
template <typename V> inline auto hsum(const V& v) {
  auto s = v[0];
  for (int t = 1; t < TX; ++t) s += v[t];
  return s;
}

// exp(x) (all uses subtract a maximum, so x <= 0 mostly): Cody-Waite reduction with round-to-nearest
// by the 1.5 * 2^mantissa trick, Taylor polynomial (float: 2e-7, double: 2e-16 relative), 2^n by
// exponent bits; exactly 0 below the underflow threshold and for -inf.
inline Vec<float> vexp(Vec<float> x) {
  const auto under = x < -87.0f;
  x = vmax(x, splat(-87.0f));
  x = x > 88.0f ? splat(88.0f) : x;
  const Vec<float> n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const Vec<float> r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  Vec<float> p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const auto bits = (__builtin_convertvector(n, VecOf<float>::itype) + 127) << 23;
  const Vec<float> result = p * reinterpret_cast<const Vec<float>&>(bits);
  return under ? Vec<float>{} : result;
}

inline Vec<double> vexp(Vec<double> x) {
  const auto under = x < -708.0;
  x = vmax(x, splat(-708.0));
  x = x > 709.0 ? splat(709.0) : x;
  const Vec<double> n = (x * 1.4426950408889634074 + 6755399441055744.0) - 6755399441055744.0;
  const Vec<double> r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  Vec<double> p = splat(1.0 / 6227020800.0);
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const auto bits = (__builtin_convertvector(n, VecOf<double>::itype) + 1023) << 52;
  const Vec<double> result = p * reinterpret_cast<const Vec<double>&>(bits);
  return under ? Vec<double>{} : result;
}

// Counter-based generator (a 32-bit integer hash applied twice, keyed by two seeds drawn from torch's
// RNG per call): the keep decision of element `index` is a pure function of (seeds, index), so the
// backward pass regenerates the forward's mask without storing it.
inline U32 mix32(U32 x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

struct Dims {
  int64_t BH, C, G, M, V, N, H, W, Wq, K, K2, P2, Hp, Wp;
};

template <typename T>
struct Buffers {
  using V = Vec<T>;
  std::vector<V> qt, A, cmax, S, smax, Wt, Pd, D, valid, Tm, U, gacc, vacc;
  std::vector<V> dOt, dP, r, dc, ds, dpt, dqacc;
  Buffers(const Dims& d, bool dropout, bool backward)
      : qt(d.C * d.G), A(d.G * d.M * d.K2), cmax(d.G * d.M), S(d.G * d.V * d.K2), smax(d.G * d.V),
        Wt(d.G * d.V * d.M), Pd(d.V * d.M * d.K2), D(dropout ? d.V * d.M * d.K2 : 0), valid(d.K2), Tm(d.M), U(d.M),
        gacc(2 * d.G), vacc(d.V) {
    if (backward) {
      dOt.resize(d.C * d.V);
      dP.resize(d.V * d.M * d.K2);
      r.resize(d.G * d.V);
      dc.resize(d.G * d.M * d.K2);
      ds.resize(d.G * d.V * d.K2);
      dpt.resize(d.V * d.K2 * d.P2);
      dqacc.resize(d.G);
    }
  }
};

template <typename T>
struct Attention {
  using V = Vec<T>;
  Dims d;
  const T *q, *k, *v, *ptab, *qe;
  const int32_t* idx;
  bool dropout;
  double p_drop;
  uint32_t seed0, seed1;

  int64_t krow(int64_t bh, int64_t ch, int64_t m, int64_t yy) const {
    return (((bh * d.C + ch) * d.M + m) * d.Hp + yy) * d.Wp;
  }

  // A, S, W, Pd (and D) of the tile (bh, row y, positions x0 .. x0+TX). Returns the number of lanes
  // whose factorised normaliser underflowed.
  int64_t probabilities(Buffers<T>& b, int64_t bh, int64_t y, int64_t x0) const {
    const int64_t C = d.C, G = d.G, M = d.M, Vn = d.V, K = d.K, K2 = d.K2, P2 = d.P2, H = d.H, W = d.W;
    const int64_t rad = K / 2;
    const V ninf = splat(-std::numeric_limits<T>::infinity());
    const bool direct = G == 1 && M == 1;
    for (int64_t a = 0; a < K; ++a) {
      const int64_t yy = y + a - rad;
      const bool row_ok = yy >= 0 && yy < H;
      for (int64_t c = 0; c < K; ++c) {
        V& vj = b.valid[a * K + c];
        for (int t = 0; t < TX; ++t) {
          const int64_t x = x0 + t, xx = x + c - rad;
          // lanes past the image width are padding: keep them finite (their gradient is zero)
          vj[t] = (x >= W || (row_ok && xx >= 0 && xx < W)) ? T(1) : T(0);
        }
      }
    }
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t g = 0; g < G; ++g) b.qt[ch * G + g] = loadu(q + (((bh * C + ch) * G + g) * H + y) * d.Wq + x0);
    // content -> A = exp(c - max_j c); each key row is loaded once for all query elements g
    for (int64_t m = 0; m < M; ++m) {
      V* cm = b.gacc.data();
      for (int64_t g = 0; g < G; ++g) cm[g] = ninf;
      for (int64_t a = 0; a < K; ++a) {
        for (int64_t c = 0; c < K; ++c) {
          const int64_t j = a * K + c;
          V* acc = b.gacc.data() + G;
          for (int64_t g = 0; g < G; ++g) acc[g] = V{};
          for (int64_t ch = 0; ch < C; ++ch) {
            const V kv = loadu(k + krow(bh, ch, m, y + a) + x0 + c);
            const V* qc = &b.qt[ch * G];
            for (int64_t g = 0; g < G; ++g) acc[g] += qc[g] * kv;
          }
          const V ok = b.valid[j];
          for (int64_t g = 0; g < G; ++g) {
            const V logit = ok != 0 ? acc[g] : ninf;
            b.A[(g * M + m) * K2 + j] = logit;
            cm[g] = vmax(cm[g], logit);
          }
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        V* Agm = &b.A[(g * M + m) * K2];
        if (!direct)
          for (int64_t j = 0; j < K2; ++j) Agm[j] = vexp(Agm[j] - cm[g]);
        b.cmax[g * M + m] = cm[g];
      }
    }
    // spatial -> S = exp(s - max_j s)
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t vv = 0; vv < Vn; ++vv) {
        V* Sgv = &b.S[(g * Vn + vv) * K2];
        V sm = ninf;
        for (int64_t j = 0; j < K2; ++j) {
          const T* pt = ptab + (vv * K2 + j) * P2;
          V acc = {};
          for (int64_t ch = 0; ch < P2; ++ch) acc += b.qt[ch * G + g] * pt[ch];
          // direct softmax (one query and one key element: the lifting layer): the whole logit here
          const V logit = b.valid[j] != 0 ? (direct ? acc + b.A[j] : acc) : ninf;
          Sgv[j] = logit;
          sm = vmax(sm, logit);
        }
        for (int64_t j = 0; j < K2; ++j) Sgv[j] = vexp(Sgv[j] - sm);
        b.smax[g * Vn + vv] = sm;
      }
    }
    if (direct) {
      // P[v, j] = W[v] * A[j] * S[v, j] with A = 1 (0 outside the image), S = exp(logit - max), W = 1/Z:
      // the backward's formulas hold unchanged, and Z >= 1 cannot underflow
      for (int64_t vv = 0; vv < Vn; ++vv) {
        V Z = {};
        for (int64_t j = 0; j < K2; ++j) Z += b.S[vv * K2 + j];
        b.Wt[vv] = splat(T(1)) / Z;
      }
      for (int64_t j = 0; j < K2; ++j) b.A[j] = b.valid[j];
    }
    V bad = {};
    if (!direct) {
      // T, group factor, normaliser -> W (factorised; `bad` counts lanes whose T underflowed)
      const V tiny = splat(std::is_same<T, float>::value ? T(1e-30) : T(1e-290));
      V real_lane;
      for (int t = 0; t < TX; ++t) real_lane[t] = x0 + t < W ? T(1) : T(0);
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t vv = 0; vv < Vn; ++vv) {
          const V* Sgv = &b.S[(g * Vn + vv) * K2];
          const V sm = b.smax[g * Vn + vv];
          V umax = ninf, Z = {};
          for (int64_t m = 0; m < M; ++m) {
            const V* Agm = &b.A[(g * M + m) * K2];
            V Tv = {};
            for (int64_t j = 0; j < K2; ++j) Tv += Sgv[j] * Agm[j];
            b.Tm[m] = Tv;
            const T* er = qe + (((bh * G + g) * d.N + idx[(vv * G + g) * M + m]) * H + y) * d.Wq + x0;
            const V u = loadu(er) + b.cmax[g * M + m] + sm;
            b.U[m] = u;
            umax = vmax(umax, u);
            bad += (Tv < tiny ? real_lane : V{});
          }
          for (int64_t m = 0; m < M; ++m) {
            b.U[m] = vexp(b.U[m] - umax);
            Z += b.U[m] * b.Tm[m];
          }
          const V inv = splat(T(1)) / Z;
          for (int64_t m = 0; m < M; ++m) b.Wt[(g * Vn + vv) * M + m] = b.U[m] * inv;
        }
      }
    }
    // summed probabilities (then dropout)
    const T keep_scale = dropout ? T(1.0 / (1.0 - p_drop)) : T(1);
    const U32 threshold = U32{} + static_cast<uint32_t>(p_drop * 16777216.0);
    U32 lane;
    for (int t = 0; t < TX; ++t) lane[t] = t;
    for (int64_t vv = 0; vv < Vn; ++vv) {
      for (int64_t m = 0; m < M; ++m) {
        V* P = &b.Pd[(vv * M + m) * K2];
        for (int64_t j = 0; j < K2; ++j) P[j] = V{};
        for (int64_t g = 0; g < G; ++g) {
          const V Wr = b.Wt[(g * Vn + vv) * M + m];
          const V* Agm = &b.A[(g * M + m) * K2];
          const V* Sgv = &b.S[(g * Vn + vv) * K2];
          for (int64_t j = 0; j < K2; ++j) P[j] += Wr * Agm[j] * Sgv[j];
        }
        if (dropout) {
          V* Dr = &b.D[(vv * M + m) * K2];
          for (int64_t j = 0; j < K2; ++j) {
            const uint64_t base = ((((static_cast<uint64_t>(bh) * Vn + vv) * M + m) * K2 + j) * H + y) * W + x0;
            const U32 lo = lane + static_cast<uint32_t>(base);
            const U32 hi = U32{} + (static_cast<uint32_t>(base >> 32) * 0x9e3779b9U ^ seed1);
            const U32 bits = mix32(mix32(lo ^ seed0) + hi) >> 8;
            const V keep = __builtin_convertvector(bits >= threshold, V);  // -1 (keep) or 0
            Dr[j] = keep * (-keep_scale);
            P[j] *= Dr[j];
          }
        }
      }
    }
    return static_cast<int64_t>(hsum(bad));
  }

  void output(Buffers<T>& b, T* out, int64_t bh, int64_t y, int64_t x0) const {
    const int64_t C = d.C, M = d.M, Vn = d.V, K = d.K, K2 = d.K2;
    V* acc = b.vacc.data();
    for (int64_t ch = 0; ch < C; ++ch) {
      for (int64_t vv = 0; vv < Vn; ++vv) acc[vv] = V{};
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t a = 0; a < K; ++a) {
          const T* vr = v + krow(bh, ch, m, y + a) + x0;
          for (int64_t c = 0; c < K; ++c) {
            const V val = loadu(vr + c);  // each value row loaded once for all output elements
            for (int64_t vv = 0; vv < Vn; ++vv) acc[vv] += b.Pd[(vv * M + m) * K2 + a * K + c] * val;
          }
        }
      }
      for (int64_t vv = 0; vv < Vn; ++vv) storeu(out + (((bh * C + ch) * Vn + vv) * d.H + y) * d.Wq + x0, acc[vv]);
    }
  }

  void backward_tile(Buffers<T>& b, const T* dout, T* dq, T* dk, T* dv, T* /*dptab*/, T* dqe, int64_t bh, int64_t y,
                     int64_t x0) const {
    const int64_t C = d.C, G = d.G, M = d.M, Vn = d.V, K = d.K, K2 = d.K2, P2 = d.P2, H = d.H;
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t vv = 0; vv < Vn; ++vv)
        b.dOt[ch * Vn + vv] = loadu(dout + (((bh * C + ch) * Vn + vv) * H + y) * d.Wq + x0);
    // dP = D * (dO . val);  dval += Pd * dO
    std::fill(b.dP.begin(), b.dP.end(), V{});
    for (int64_t ch = 0; ch < C; ++ch) {
      const V* dO = &b.dOt[ch * Vn];
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t a = 0; a < K; ++a) {
          const int64_t row = krow(bh, ch, m, y + a) + x0;
          for (int64_t c = 0; c < K; ++c) {
            const int64_t j = a * K + c;
            const V val = loadu(v + row + c);
            V acc = {};
            for (int64_t vv = 0; vv < Vn; ++vv) {
              b.dP[(vv * M + m) * K2 + j] += dO[vv] * val;
              acc += b.Pd[(vv * M + m) * K2 + j] * dO[vv];
            }
            storeu(dv + row + c, loadu(dv + row + c) + acc);
          }
        }
      }
    }
    if (dropout)
      for (size_t i = 0; i < b.dP.size(); ++i) b.dP[i] *= b.D[i];
    // r[g,v] = sum_{m,j} P dP
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t vv = 0; vv < Vn; ++vv) {
        const V* Sgv = &b.S[(g * Vn + vv) * K2];
        V rr = {};
        for (int64_t m = 0; m < M; ++m) {
          const V* Agm = &b.A[(g * M + m) * K2];
          const V* dP = &b.dP[(vv * M + m) * K2];
          V acc = {};
          for (int64_t j = 0; j < K2; ++j) acc += Agm[j] * Sgv[j] * dP[j];
          rr += b.Wt[(g * Vn + vv) * M + m] * acc;
        }
        b.r[g * Vn + vv] = rr;
      }
    }
    // dlogit = P (dP - r), summed into the content (dc), spatial (ds) and group (dqe) terms
    std::fill(b.dc.begin(), b.dc.end(), V{});
    std::fill(b.ds.begin(), b.ds.end(), V{});
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t vv = 0; vv < Vn; ++vv) {
        const V rr = b.r[g * Vn + vv];
        const V* Sgv = &b.S[(g * Vn + vv) * K2];
        V* dsgv = &b.ds[(g * Vn + vv) * K2];
        for (int64_t m = 0; m < M; ++m) {
          const V* Agm = &b.A[(g * M + m) * K2];
          V* dcgm = &b.dc[(g * M + m) * K2];
          const V Wr = b.Wt[(g * Vn + vv) * M + m];
          const V* dP = &b.dP[(vv * M + m) * K2];
          V de = {};
          for (int64_t j = 0; j < K2; ++j) {
            const V dl = Wr * Agm[j] * Sgv[j] * (dP[j] - rr);
            dcgm[j] += dl;
            dsgv[j] += dl;
            de += dl;
          }
          T* der = dqe + (((bh * G + g) * d.N + idx[(vv * G + g) * M + m]) * H + y) * d.Wq + x0;
          storeu(der, loadu(der) + de);
        }
      }
    }
    // dq (content + spatial) and dk: one read-modify-write of each key row per (channel, m, j), the
    // query elements g accumulated in registers first
    for (int64_t ch = 0; ch < C; ++ch) {
      V* dqacc = b.dqacc.data();
      for (int64_t g = 0; g < G; ++g) dqacc[g] = V{};
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t a = 0; a < K; ++a) {
          const int64_t row = krow(bh, ch, m, y + a) + x0;
          for (int64_t c = 0; c < K; ++c) {
            const int64_t j = a * K + c;
            const V kv = loadu(k + row + c);
            V dkacc = {};
            for (int64_t g = 0; g < G; ++g) {
              const V dcj = b.dc[(g * M + m) * K2 + j];
              dkacc += dcj * b.qt[ch * G + g];
              dqacc[g] += dcj * kv;
            }
            storeu(dk + row + c, loadu(dk + row + c) + dkacc);
          }
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        V acc = dqacc[g];
        if (ch < P2) {
          for (int64_t vv = 0; vv < Vn; ++vv) {
            const V* dsgv = &b.ds[(g * Vn + vv) * K2];
            for (int64_t j = 0; j < K2; ++j) acc += dsgv[j] * ptab[(vv * K2 + j) * P2 + ch];
          }
        }
        storeu(dq + (((bh * C + ch) * G + g) * H + y) * d.Wq + x0, acc);  // each query tile once
      }
    }
    // dptab: lane-wise partial sums, reduced across lanes once per (batch x head) by the caller
    for (int64_t vv = 0; vv < Vn; ++vv)
      for (int64_t j = 0; j < K2; ++j)
        for (int64_t ch = 0; ch < P2; ++ch) {
          V red = b.dpt[(vv * K2 + j) * P2 + ch];
          for (int64_t g = 0; g < G; ++g) red += b.ds[(g * Vn + vv) * K2 + j] * b.qt[ch * G + g];
          b.dpt[(vv * K2 + j) * P2 + ch] = red;
        }
  }
};

Dims make_dims(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& ptab, const torch::Tensor& qe,
               const torch::Tensor& idx, int64_t width) {
  Dims d;
  d.BH = q.size(0);
  d.C = q.size(1);
  d.G = q.size(2);
  d.H = q.size(3);
  d.Wq = q.size(4);
  d.W = width;
  d.M = k.size(2);
  d.Hp = k.size(3);
  d.Wp = k.size(4);
  d.K = d.Hp - d.H + 1;
  d.K2 = d.K * d.K;
  d.V = ptab.size(0);
  d.P2 = ptab.size(2);
  d.N = qe.size(2);
  TORCH_CHECK(d.Wq % TX == 0, "query width must be padded to a multiple of ", TX);
  TORCH_CHECK(d.Wp == d.Wq + d.K - 1 && d.K % 2 == 1, "keys must be padded by K//2 on every side");
  TORCH_CHECK(ptab.size(1) == d.K2 && d.P2 <= d.C, "bad positional table shape");
  TORCH_CHECK(idx.size(0) == d.V && idx.size(1) == d.G && idx.size(2) == d.M, "bad group index table shape");
  TORCH_CHECK(qe.size(0) == d.BH && qe.size(1) == d.G && qe.size(3) == d.H && qe.size(4) == d.Wq, "bad qe shape");
  return d;
}

void check(const torch::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dtype, name,
              " must be a contiguous CPU tensor of the query's dtype");
}

template <typename scalar_t>
Attention<scalar_t> make_attention(const Dims& d, const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& ptab, const torch::Tensor& qe,
                                   const torch::Tensor& idx, double p_drop, int64_t seed0, int64_t seed1) {
  Attention<scalar_t> att;
  att.d = d;
  att.q = q.data_ptr<scalar_t>();
  att.k = k.data_ptr<scalar_t>();
  att.v = v.data_ptr<scalar_t>();
  att.ptab = ptab.data_ptr<scalar_t>();
  att.qe = qe.data_ptr<scalar_t>();
  att.idx = idx.data_ptr<int32_t>();
  att.dropout = p_drop > 0;
  att.p_drop = p_drop;
  att.seed0 = static_cast<uint32_t>(seed0);
  att.seed1 = static_cast<uint32_t>(seed1);
  return att;
}

std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor ptab,
                                   torch::Tensor qe, torch::Tensor idx, int64_t width, double p_drop, int64_t seed0,
                                   int64_t seed1) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fused group attention supports float32/float64");
  check(q, "q", dtype), check(k, "k", dtype), check(v, "v", dtype), check(ptab, "ptab", dtype), check(qe, "qe", dtype);
  TORCH_CHECK(idx.scalar_type() == at::kInt && idx.is_contiguous(), "idx must be contiguous int32");
  TORCH_CHECK(k.sizes() == v.sizes(), "keys and values must have the same shape");
  const Dims d = make_dims(q, k, ptab, qe, idx, width);
  auto out = torch::empty({d.BH, d.C, d.V, d.H, d.Wq}, q.options());
  std::atomic<int64_t> bad{0};
  AT_DISPATCH_FLOATING_TYPES(dtype, "gevit_fused_attention_forward", [&] {
    const auto att = make_attention<scalar_t>(d, q, k, v, ptab, qe, idx, p_drop, seed0, seed1);
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, d.BH * d.H, 1, [&](int64_t begin, int64_t end) {
      Buffers<scalar_t> b(d, att.dropout, false);
      int64_t local_bad = 0;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / d.H, y = item % d.H;
        for (int64_t x0 = 0; x0 < d.Wq; x0 += TX) {
          local_bad += att.probabilities(b, bh, y, x0);
          att.output(b, o, bh, y, x0);
        }
      }
      bad += local_bad;
    });
  });
  return {out, torch::tensor(bad.load(), torch::kLong)};
}

std::vector<torch::Tensor> backward(torch::Tensor dout, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor ptab, torch::Tensor qe, torch::Tensor idx, int64_t width,
                                    double p_drop, int64_t seed0, int64_t seed1) {
  const auto dtype = q.scalar_type();
  dout = dout.contiguous();
  check(dout, "grad", dtype);
  const Dims d = make_dims(q, k, ptab, qe, idx, width);
  auto dq = torch::empty_like(q), dk = torch::zeros_like(k), dv = torch::zeros_like(v), dqe = torch::zeros_like(qe);
  auto dptab = torch::zeros({d.BH, d.V, d.K2, d.P2}, q.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "gevit_fused_attention_backward", [&] {
    const auto att = make_attention<scalar_t>(d, q, k, v, ptab, qe, idx, p_drop, seed0, seed1);
    const scalar_t* g = dout.data_ptr<scalar_t>();
    scalar_t *pq = dq.data_ptr<scalar_t>(), *pk = dk.data_ptr<scalar_t>(), *pv = dv.data_ptr<scalar_t>();
    scalar_t *pp = dptab.data_ptr<scalar_t>(), *pe = dqe.data_ptr<scalar_t>();
    // one (batch, head) per task: keys/values of a head are its own, so the scatter needs no atomics
    at::parallel_for(0, d.BH, 1, [&](int64_t begin, int64_t end) {
      Buffers<scalar_t> b(d, att.dropout, true);
      for (int64_t bh = begin; bh < end; ++bh) {
        std::fill(b.dpt.begin(), b.dpt.end(), Vec<scalar_t>{});
        for (int64_t y = 0; y < d.H; ++y)
          for (int64_t x0 = 0; x0 < d.Wq; x0 += TX) {
            att.probabilities(b, bh, y, x0);
            att.backward_tile(b, g, pq, pk, pv, pp, pe, bh, y, x0);
          }
        for (size_t i = 0; i < b.dpt.size(); ++i) pp[bh * b.dpt.size() + i] = hsum(b.dpt[i]);
      }
    });
  });
  return {dq, dk, dv, dptab.sum(0), dqe};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused group attention forward");
  m.def("backward", &backward, "fused group attention backward");
  m.attr("TILE") = TX;
}
