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
// Inputs are the layers' own tensors, unpadded: qkv [B][3][heads][C][G][H][W] (q scaled, k, v: the
// output of their one projection matmul), ptab [V][K2][P2], emb [N][C-P2] (the group embedding; N = 0
// for the lifting layer), idx [V][G][M] (int32); out [B][heads][C][V][H][W]. One task per
// (batch x head): it copies its q, k, v into thread-local buffers padded with zeros (q to whole vector
// tiles of TX positions, k and v by r = K/2 on every side, a few hundred KB that stay in cache), computes
// its group scores qe[g][n] = q_g[P2:] . emb[n] there, and writes its rows of out (and of the gradients)
// back unpadded: no padded copy, zero-fill or slice of any full-size tensor outside the kernel. Inside a
// task the work is vectorised over TX consecutive query positions of one image row; keys and values are
// read as shifted rows of the padded buffers (no window copies). Threads: at::parallel_for (torch's
// pool); a head's gradients of k, v, ptab and emb are its own task's, so the backward needs no atomics.
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

// Counter-based generator (a 32-bit integer hash of the element's counter keyed by two seeds drawn from
// torch's RNG per call; its two 16-bit halves serve two neighbours): the keep decision of element `index` is a pure function of (seeds, index), so the
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
  int64_t B, heads, BH, C, G, M, V, N, CE, H, W, Wq, K, K2, P2, Hp, Wp;
};

template <typename T>
struct Buffers {
  using V = Vec<T>;
  std::vector<V> qt, A, cmax, S, smax, Wt, Pd, D, valid, Tm, Tall, U, gacc, vacc;
  std::vector<V> dOt, dP, r, X, dc, ds, dpt, dqacc;
  Buffers(const Dims& d, bool dropout, bool backward)
      : qt(d.C * d.G), A(d.G * d.M * d.K2), cmax(d.G * d.M), S(d.G * d.V * d.K2), smax(d.G * d.V),
        Wt(d.G * d.V * d.M), Pd(d.V * d.M * d.K2), D(dropout ? d.V * d.M * d.K2 : 0), valid(d.K2), Tm(d.M), Tall(d.G * d.V * d.M), U(d.M),
        gacc(2 * d.G), vacc(d.V) {
    if (backward) {
      dOt.resize(d.C * d.V);
      dP.resize(d.V * d.M * d.K2);
      r.resize(d.G * d.V);
      X.resize(d.G * d.V * d.M);
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

  // rows of the task's padded buffers (q, k, v, qe point into them; `bh` only keys the dropout counter)
  int64_t krow(int64_t ch, int64_t m, int64_t yy) const { return ((ch * d.M + m) * d.Hp + yy) * d.Wp; }

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
      for (int64_t g = 0; g < G; ++g) b.qt[ch * G + g] = loadu(q + ((ch * G + g) * H + y) * d.Wq + x0);
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
            const V kv = loadu(k + krow(ch, m, y + a) + x0 + c);
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
            b.Tall[(g * Vn + vv) * M + m] = Tv;
            const T* er = qe + ((g * d.N + idx[(vv * G + g) * M + m]) * H + y) * d.Wq + x0;
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
    // 16-bit keep decisions; the scale matches the quantised keep probability exactly
    const uint32_t drop16 = static_cast<uint32_t>(p_drop * 65536.0 + 0.5);
    const U32 threshold = U32{} + drop16;
    const T keep_scale = dropout ? T(65536.0 / (65536.0 - drop16)) : T(1);
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
          // one hash per two neighbours: its low and high 16 bits decide j and j + 1
          const int64_t pairs = (K2 + 1) / 2;
          for (int64_t jp = 0; jp < pairs; ++jp) {
            const uint64_t base = ((((static_cast<uint64_t>(bh) * Vn + vv) * M + m) * pairs + jp) * H + y) * W + x0;
            const U32 lo = lane + static_cast<uint32_t>(base);
            const U32 hi = U32{} + (static_cast<uint32_t>(base >> 32) * 0x9e3779b9U ^ seed1);
            const U32 bits = mix32((lo ^ seed0) + hi);
            for (int64_t half = 0; half < 2; ++half) {
              const int64_t j = 2 * jp + half;
              if (j >= K2) break;
              const U32 part = half ? bits >> 16 : bits & 0xffffU;
              const V keep = __builtin_convertvector(part >= threshold, V);  // -1 (keep) or 0
              Dr[j] = keep * (-keep_scale);
              P[j] *= Dr[j];
            }
          }
        }
      }
    }
    return static_cast<int64_t>(hsum(bad));
  }

  void output(Buffers<T>& b, T* out, int64_t y, int64_t x0) const {
    const int64_t C = d.C, M = d.M, Vn = d.V, K = d.K, K2 = d.K2;
    V* acc = b.vacc.data();
    for (int64_t ch = 0; ch < C; ++ch) {
      for (int64_t vv = 0; vv < Vn; ++vv) acc[vv] = V{};
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t a = 0; a < K; ++a) {
          const T* vr = v + krow(ch, m, y + a) + x0;
          for (int64_t c = 0; c < K; ++c) {
            const V val = loadu(vr + c);  // each value row loaded once for all output elements
            for (int64_t vv = 0; vv < Vn; ++vv) acc[vv] += b.Pd[(vv * M + m) * K2 + a * K + c] * val;
          }
        }
      }
      for (int64_t vv = 0; vv < Vn; ++vv) storeu(out + ((ch * Vn + vv) * d.H + y) * d.Wq + x0, acc[vv]);
    }
  }

  // dout, dq, dk, dv, dqe: the task's padded buffers (same layouts as q, k, v, qe; out for dout)
  void backward_tile(Buffers<T>& b, const T* dout, T* dq, T* dk, T* dv, T* dqe, int64_t y, int64_t x0) const {
    const int64_t C = d.C, G = d.G, M = d.M, Vn = d.V, K = d.K, K2 = d.K2, P2 = d.P2, H = d.H;
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t vv = 0; vv < Vn; ++vv)
        b.dOt[ch * Vn + vv] = loadu(dout + ((ch * Vn + vv) * H + y) * d.Wq + x0);
    // dP = D * (dO . val);  dval += Pd * dO
    std::fill(b.dP.begin(), b.dP.end(), V{});
    for (int64_t ch = 0; ch < C; ++ch) {
      const V* dO = &b.dOt[ch * Vn];
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t a = 0; a < K; ++a) {
          const int64_t row = krow(ch, m, y + a) + x0;
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
    // X[g,v,m] = sum_j A S dP and r[g,v] = sum_m W X = sum_{m,j} P dP
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t vv = 0; vv < Vn; ++vv) {
        const V* Sgv = &b.S[(g * Vn + vv) * K2];
        V rr = {};
        for (int64_t m = 0; m < M; ++m) {
          const V* Agm = &b.A[(g * M + m) * K2];
          const V* dP = &b.dP[(vv * M + m) * K2];
          V acc = {};
          for (int64_t j = 0; j < K2; ++j) acc += Agm[j] * Sgv[j] * dP[j];
          b.X[(g * Vn + vv) * M + m] = acc;
          rr += b.Wt[(g * Vn + vv) * M + m] * acc;
        }
        b.r[g * Vn + vv] = rr;
      }
    }
    // dlogit = W A S (dP - r), summed into the content (dc: over v), spatial (ds: over m) and group
    // (over j: W (X - r T)) terms, each accumulated in registers and stored once
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t m = 0; m < M; ++m) {
        const V* Agm = &b.A[(g * M + m) * K2];
        V* dcgm = &b.dc[(g * M + m) * K2];
        for (int64_t j = 0; j < K2; ++j) {
          V acc = {};
          for (int64_t vv = 0; vv < Vn; ++vv)
            acc += b.Wt[(g * Vn + vv) * M + m] * b.S[(g * Vn + vv) * K2 + j] *
                   (b.dP[(vv * M + m) * K2 + j] - b.r[g * Vn + vv]);
          dcgm[j] = Agm[j] * acc;
        }
      }
      for (int64_t vv = 0; vv < Vn; ++vv) {
        const V rr = b.r[g * Vn + vv];
        const V* Sgv = &b.S[(g * Vn + vv) * K2];
        V* dsgv = &b.ds[(g * Vn + vv) * K2];
        const V* Wr = &b.Wt[(g * Vn + vv) * M];
        for (int64_t j = 0; j < K2; ++j) {
          V acc = {};
          for (int64_t m = 0; m < M; ++m) acc += Wr[m] * b.A[(g * M + m) * K2 + j] * (b.dP[(vv * M + m) * K2 + j] - rr);
          dsgv[j] = Sgv[j] * acc;
        }
        if (d.N > 0 && !(G == 1 && M == 1)) {  // the group layer (factorised: T saved by probabilities())
          for (int64_t m = 0; m < M; ++m) {
            const V de = Wr[m] * (b.X[(g * Vn + vv) * M + m] - rr * b.Tall[(g * Vn + vv) * M + m]);
            T* der = dqe + ((g * d.N + idx[(vv * G + g) * M + m]) * H + y) * d.Wq + x0;
            storeu(der, loadu(der) + de);
          }
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
          const int64_t row = krow(ch, m, y + a) + x0;
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
        storeu(dq + ((ch * G + g) * H + y) * d.Wq + x0, acc);  // each query tile once
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

Dims make_dims(const torch::Tensor& qkv, const torch::Tensor& ptab, const torch::Tensor& emb,
               const torch::Tensor& idx, int64_t kernel) {
  TORCH_CHECK(qkv.dim() == 7 && qkv.size(1) == 3, "qkv must be (B, 3, heads, C, G, H, W)");
  TORCH_CHECK(kernel % 2 == 1 && kernel >= 1, "the neighbourhood side must be odd");
  Dims d;
  d.B = qkv.size(0);
  d.heads = qkv.size(2);
  d.BH = d.B * d.heads;
  d.C = qkv.size(3);
  d.G = d.M = qkv.size(4);
  d.H = qkv.size(5);
  d.W = qkv.size(6);
  d.Wq = (d.W + TX - 1) / TX * TX;
  d.K = kernel;
  d.K2 = d.K * d.K;
  d.Hp = d.H + d.K - 1;
  d.Wp = d.Wq + d.K - 1;
  d.V = ptab.size(0);
  d.P2 = ptab.size(2);
  d.N = emb.size(0);
  d.CE = d.C - d.P2;
  TORCH_CHECK(ptab.dim() == 3 && ptab.size(1) == d.K2 && d.P2 <= d.C, "bad positional table shape");
  TORCH_CHECK(idx.dim() == 3 && idx.size(0) == d.V && idx.size(1) == d.G && idx.size(2) == d.M,
              "bad group index table shape");
  TORCH_CHECK(d.N == 0 ? !(d.G > 1) : (emb.dim() == 2 && emb.size(1) == d.CE), "bad group embedding shape");
  if (d.N > 0) {
    const auto lo = idx.min().item<int32_t>(), hi = idx.max().item<int32_t>();
    TORCH_CHECK(lo >= 0 && hi < d.N, "group index out of range of the embedding");
  }
  return d;
}

void check(const torch::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dtype, name,
              " must be a contiguous CPU tensor of the query's dtype");
}

// One task's padded copies of its head (see the top of the file) and, for the backward, their gradients.
template <typename T>
struct Local {
  const Dims& d;
  std::vector<T> q, k, v, qe, out, dq, dk, dv, dqe;
  Local(const Dims& dims, bool backward)
      : d(dims), q(d.C * d.G * d.H * d.Wq), k(d.C * d.M * d.Hp * d.Wp), v(k.size()), qe(d.G * d.N * d.H * d.Wq),
        out(d.C * d.V * d.H * d.Wq) {
    if (backward) {
      dq.resize(q.size()), dk.resize(k.size()), dv.resize(k.size()), dqe.resize(qe.size());
    }
  }
  // q, k, v of head `bh` into the padded buffers (their padding was zeroed at allocation and is never
  // written), then the group scores qe[g][n] = q_g[P2:] . emb[n]
  void load(const T* qkv, const T* emb, int64_t bh) {
    const int64_t b = bh / d.heads, h = bh % d.heads, r = d.K / 2, plane = d.C * d.G * d.H * d.W;
    const T* src[3] = {qkv + ((b * 3 + 0) * d.heads + h) * plane, qkv + ((b * 3 + 1) * d.heads + h) * plane,
                       qkv + ((b * 3 + 2) * d.heads + h) * plane};
    for (int64_t row = 0; row < d.C * d.G * d.H; ++row) {
      std::memcpy(&q[row * d.Wq], src[0] + row * d.W, d.W * sizeof(T));
      const int64_t cg = row / d.H, y = row % d.H;
      const int64_t dst = (cg * d.Hp + y + r) * d.Wp + r;
      std::memcpy(&k[dst], src[1] + row * d.W, d.W * sizeof(T));
      std::memcpy(&v[dst], src[2] + row * d.W, d.W * sizeof(T));
    }
    const int64_t hw = d.H * d.Wq;
    for (int64_t g = 0; g < d.G; ++g)
      for (int64_t n = 0; n < d.N; ++n) {
        T* e = &qe[(g * d.N + n) * hw];
        std::fill(e, e + hw, T(0));
        for (int64_t c = 0; c < d.CE; ++c) {
          const T w = emb[n * d.CE + c];
          const T* qc = &q[((d.P2 + c) * d.G + g) * hw];
          for (int64_t i = 0; i < hw; ++i) e[i] += w * qc[i];
        }
      }
  }
};

// rows of a padded [rows][Wq] buffer -> an unpadded [rows][W] tensor
template <typename T> void store_rows(T* dst, const T* src, int64_t rows, int64_t W, int64_t Wq) {
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * W, src + i * Wq, W * sizeof(T));
}

template <typename scalar_t>
Attention<scalar_t> make_attention(const Dims& d, const torch::Tensor& ptab, const torch::Tensor& idx, double p_drop,
                                   int64_t seed0, int64_t seed1) {
  Attention<scalar_t> att;
  att.d = d;
  att.ptab = ptab.data_ptr<scalar_t>();
  att.idx = idx.data_ptr<int32_t>();
  att.dropout = p_drop > 0;
  att.p_drop = p_drop;
  att.seed0 = static_cast<uint32_t>(seed0);
  att.seed1 = static_cast<uint32_t>(seed1);
  return att;
}

template <typename scalar_t> void point_at(Attention<scalar_t>& att, const Local<scalar_t>& l) {
  att.q = l.q.data(), att.k = l.k.data(), att.v = l.v.data(), att.qe = l.qe.data();
}

std::vector<torch::Tensor> forward(torch::Tensor qkv, torch::Tensor ptab, torch::Tensor emb, torch::Tensor idx,
                                   int64_t kernel, double p_drop, int64_t seed0, int64_t seed1) {
  const auto dtype = qkv.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fused group attention supports float32/float64");
  check(qkv, "qkv", dtype), check(ptab, "ptab", dtype), check(emb, "emb", dtype);
  TORCH_CHECK(idx.scalar_type() == at::kInt && idx.is_contiguous(), "idx must be contiguous int32");
  const Dims d = make_dims(qkv, ptab, emb, idx, kernel);
  auto out = torch::empty({d.B, d.heads, d.C, d.V, d.H, d.W}, qkv.options());
  std::atomic<int64_t> bad{0};
  AT_DISPATCH_FLOATING_TYPES(dtype, "gevit_fused_attention_forward", [&] {
    auto att = make_attention<scalar_t>(d, ptab, idx, p_drop, seed0, seed1);
    const scalar_t *x = qkv.data_ptr<scalar_t>(), *e = emb.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, d.BH, 1, [&](int64_t begin, int64_t end) {
      Buffers<scalar_t> b(d, att.dropout, false);
      Local<scalar_t> l(d, false);
      auto task = att;
      point_at(task, l);
      int64_t local_bad = 0;
      for (int64_t bh = begin; bh < end; ++bh) {
        l.load(x, e, bh);
        for (int64_t y = 0; y < d.H; ++y)
          for (int64_t x0 = 0; x0 < d.Wq; x0 += TX) {
            local_bad += task.probabilities(b, bh, y, x0);
            task.output(b, l.out.data(), y, x0);
          }
        store_rows(o + bh * d.C * d.V * d.H * d.W, l.out.data(), d.C * d.V * d.H, d.W, d.Wq);
      }
      bad += local_bad;
    });
  });
  return {out, torch::tensor(bad.load(), torch::kLong)};
}

std::vector<torch::Tensor> backward(torch::Tensor dout, torch::Tensor qkv, torch::Tensor ptab, torch::Tensor emb,
                                    torch::Tensor idx, int64_t kernel, double p_drop, int64_t seed0, int64_t seed1) {
  const auto dtype = qkv.scalar_type();
  dout = dout.contiguous();
  check(dout, "grad", dtype);
  const Dims d = make_dims(qkv, ptab, emb, idx, kernel);
  auto dqkv = torch::empty_like(qkv);
  auto dptab = torch::empty({d.BH, d.V, d.K2, d.P2}, qkv.options());
  auto demb = torch::empty({d.BH, d.N, d.CE}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "gevit_fused_attention_backward", [&] {
    using V = Vec<scalar_t>;
    auto att = make_attention<scalar_t>(d, ptab, idx, p_drop, seed0, seed1);
    const scalar_t *x = qkv.data_ptr<scalar_t>(), *e = emb.data_ptr<scalar_t>(), *g = dout.data_ptr<scalar_t>();
    scalar_t *pg = dqkv.data_ptr<scalar_t>(), *pp = dptab.data_ptr<scalar_t>(), *pe = demb.data_ptr<scalar_t>();
    const int64_t hw = d.H * d.Wq, r = d.K / 2, plane = d.C * d.G * d.H * d.W;
    // one (batch, head) per task: keys/values of a head are its own, so the scatter needs no atomics
    at::parallel_for(0, d.BH, 1, [&](int64_t begin, int64_t end) {
      Buffers<scalar_t> b(d, att.dropout, true);
      Local<scalar_t> l(d, true);
      auto task = att;
      point_at(task, l);
      for (int64_t bh = begin; bh < end; ++bh) {
        l.load(x, e, bh);
        // the incoming gradient padded to whole tiles (l.out's padding lanes stay zero)
        const scalar_t* go = g + bh * d.C * d.V * d.H * d.W;
        for (int64_t row = 0; row < d.C * d.V * d.H; ++row)
          std::memcpy(&l.out[row * d.Wq], go + row * d.W, d.W * sizeof(scalar_t));
        std::fill(l.dk.begin(), l.dk.end(), scalar_t(0));
        std::fill(l.dv.begin(), l.dv.end(), scalar_t(0));
        std::fill(l.dqe.begin(), l.dqe.end(), scalar_t(0));
        std::fill(b.dpt.begin(), b.dpt.end(), V{});
        for (int64_t y = 0; y < d.H; ++y)
          for (int64_t x0 = 0; x0 < d.Wq; x0 += TX) {
            task.probabilities(b, bh, y, x0);
            task.backward_tile(b, l.out.data(), l.dq.data(), l.dk.data(), l.dv.data(), l.dqe.data(), y, x0);
          }
        for (size_t i = 0; i < b.dpt.size(); ++i) pp[bh * b.dpt.size() + i] = hsum(b.dpt[i]);
        // group scores -> dq (their channels P2..C) and demb (padding lanes of dqe are zero)
        for (int64_t n = 0; n < d.N; ++n)
          for (int64_t c = 0; c < d.CE; ++c) {
            const scalar_t w = e[n * d.CE + c];
            scalar_t acc = 0;
            for (int64_t gg = 0; gg < d.G; ++gg) {
              const scalar_t* de = &l.dqe[(gg * d.N + n) * hw];
              const scalar_t* qc = &l.q[((d.P2 + c) * d.G + gg) * hw];
              scalar_t* dqc = &l.dq[((d.P2 + c) * d.G + gg) * hw];
              for (int64_t i = 0; i < hw; ++i) {
                dqc[i] += w * de[i];
                acc += de[i] * qc[i];
              }
            }
            pe[(bh * d.N + n) * d.CE + c] = acc;
          }
        const int64_t bb = bh / d.heads, h = bh % d.heads;
        scalar_t* dst[3] = {pg + ((bb * 3 + 0) * d.heads + h) * plane, pg + ((bb * 3 + 1) * d.heads + h) * plane,
                            pg + ((bb * 3 + 2) * d.heads + h) * plane};
        for (int64_t row = 0; row < d.C * d.G * d.H; ++row) {
          std::memcpy(dst[0] + row * d.W, &l.dq[row * d.Wq], d.W * sizeof(scalar_t));
          const int64_t cg = row / d.H, y = row % d.H;
          const int64_t src = (cg * d.Hp + y + r) * d.Wp + r;
          std::memcpy(dst[1] + row * d.W, &l.dk[src], d.W * sizeof(scalar_t));
          std::memcpy(dst[2] + row * d.W, &l.dv[src], d.W * sizeof(scalar_t));
        }
      }
    });
  });
  // the per-head partial sums of dptab and demb, reduced serially (a few tens of thousands of adds)
  auto reduce = [](const torch::Tensor& parts) {
    auto total = torch::zeros(parts.sizes().slice(1), parts.options());
    AT_DISPATCH_FLOATING_TYPES(parts.scalar_type(), "gevit_fused_attention_reduce", [&] {
      const int64_t n = total.numel();
      const scalar_t* src = parts.data_ptr<scalar_t>();
      scalar_t* dst = total.data_ptr<scalar_t>();
      for (int64_t i = 0; i < parts.size(0); ++i)
        for (int64_t e = 0; e < n; ++e) dst[e] += src[i * n + e];
    });
    return total;
  };
  return {dqkv, reduce(dptab), reduce(demb)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused group attention forward");
  m.def("backward", &backward, "fused group attention backward");
  m.attr("TILE") = TX;
}
