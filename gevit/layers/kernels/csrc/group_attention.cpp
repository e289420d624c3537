// Fused, factorised group self-attention for GE-ViT / GSA-Nets on the CPU (forward and backward).
//
// One kernel serves both layers. Per (batch x head) `bh`, output element v, query element g, query
// position x, key element m and neighbour offset j (the k x k window, row-major):
//
//   logit(v, g, m, x, j) = c[g,m,j] + s[g,v,j] + e[g,v,m]
//     c = q_g(x) . k_m(x + d_j)                 content  (all C channels)
//     s = q_g(x)[:P2] . ptab[v, j]              spatial  (rotated row/col encodings, first P2 channels)
//     e = qe[g, idx[v,g,m]](x)                  group    (q_g . E precomputed per task, gathered here)
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
// output of their one projection matmul, without its bias), bias [3][heads][C] (added here, where each
// row is copied anyway, so the projection writes its output once), ptab [V][K2][P2], emb [N][C-P2] (the
// group embedding; N = 0 for the lifting layer), idx [V][G][M] (int32); out [B][heads][C][V][H][W].
//
// Tiles. A tile is TX consecutive positions of the flattened image (p = y * W + x), so no lane is idle
// except in the last tile of a head (whatever the width). Neighbour j of position p sits at p + off[j],
// off[j] = (a - r) * W + (c - r): keys and values are read as shifted, contiguous vectors of a per-task
// copy of the head in which each (channel, element) row is the flattened image with r * W + r zeros on
// either side. Lanes whose neighbour wraps into the next or previous image row, or lies above or below
// the image, are masked out by a per-tile validity vector (their probabilities are exactly 0, so what
// they read only needs to be finite).
//
// Loops. Every contraction (over channels, neighbours, group elements) accumulates a small block of
// outputs (up to 4 x 4 tile vectors) in registers and stores each once; blocks are compile-time sizes
// (4, 2, 1) so the accumulators never live in memory. The backward adds the key and value gradients of a
// tile into shifted rows of the task's buffers; a load overlapping a store still in flight stalls the
// core (store forwarding fails), so those read-modify-writes run in an order in which consecutive ones
// never overlap: neighbours in blocks whose windows are pairwise TX apart, the block loop outermost.
//
// Threads: at::parallel_for (torch's pool) starts one worker per thread, and the workers take
// (batch x head) tasks from a shared counter, so a worker that the OS deschedules (the machine is busy)
// delays only its current task, not a fixed share of the call. A head's gradients of k, v, ptab and emb
// are its own task's, so the backward needs no atomics.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int TX = 16;  // flattened query positions per tile: one vector of each per-tile quantity

// GCC/Clang vector extensions: one TX-wide vector per (tile, index) keeps every inner loop vectorised
// whatever the compiler's loop heuristics (the build uses -march=native; a 16-float vector is one
// AVX-512 register or two AVX2 registers).
template <typename T> struct VecOf;
template <> struct VecOf<float> {
  typedef float type __attribute__((vector_size(TX * sizeof(float))));
  typedef float utype __attribute__((vector_size(TX * sizeof(float)), aligned(sizeof(float))));
  typedef int32_t itype __attribute__((vector_size(TX * sizeof(int32_t))));
};
template <> struct VecOf<double> {
  typedef double type __attribute__((vector_size(TX * sizeof(double))));
  typedef double utype __attribute__((vector_size(TX * sizeof(double)), aligned(sizeof(double))));
  typedef int64_t itype __attribute__((vector_size(TX * sizeof(int64_t))));
};
template <typename T> using Vec = typename VecOf<T>::type;
typedef uint32_t U32 __attribute__((vector_size(TX * sizeof(uint32_t))));

// unaligned vector access through a vector type aligned like its elements (not memcpy: a memcpy store may
// alias anything, so the compiler would reload every pointer and size after it)
template <typename T> inline Vec<T> loadu(const T* p) { return *reinterpret_cast<const typename VecOf<T>::utype*>(p); }
template <typename T> inline void storeu(T* p, const Vec<T>& v) { *reinterpret_cast<typename VecOf<T>::utype*>(p) = v; }
template <typename T> inline Vec<T> splat(T x) { return Vec<T>{} + x; }
template <typename V> inline V vmax(const V& a, const V& b) { return a > b ? a : b; }
template <typename V> inline auto hsum(const V& v) {
  auto s = v[0];
  for (int t = 1; t < TX; ++t) s += v[t];
  return s;
}

// exp(x) for x <= 0 (every use subtracts a maximum): Cody-Waite reduction, round-to-nearest by adding
// 1.5 * 2^mantissa, whose low bits are then the biased exponent of 2^n; Taylor polynomial (float: 2e-7,
// double: 2e-16 relative). Exactly 0 for -inf and below the smallest normal result (the biased exponent
// of the clamped input rounds to 0).
inline Vec<float> vexp(Vec<float> x) {
  x = vmax(x, splat(-88.0f));
  const Vec<float> t = x * 1.44269504088896341f + (12582912.0f + 127.0f);
  const Vec<float> n = t - (12582912.0f + 127.0f);
  const Vec<float> r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  Vec<float> p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const auto bits = reinterpret_cast<const VecOf<float>::itype&>(t) << 23;
  return p * reinterpret_cast<const Vec<float>&>(bits);
}

inline Vec<double> vexp(Vec<double> x) {
  x = vmax(x, splat(-709.0));
  const Vec<double> t = x * 1.4426950408889634074 + (6755399441055744.0 + 1023.0);
  const Vec<double> n = t - (6755399441055744.0 + 1023.0);
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
  const auto bits = reinterpret_cast<const VecOf<double>::itype&>(t) << 52;
  return p * reinterpret_cast<const Vec<double>&>(bits);
}

// Counter-based generator (a 32-bit integer hash of the element's counter keyed by two seeds drawn from
// torch's RNG per call; its two 16-bit halves serve two neighbours): the keep decision of an element is
// a pure function of (seeds, counter), so the backward regenerates the forward's mask without storing it.
inline U32 mix32(U32 x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

#define GEVIT_UNROLL _Pragma("GCC unroll 16")

template <int B> using Int = std::integral_constant<int, B>;

// n items in blocks of 4, then 2, then 1: f(Int<block>{}, first item)
template <typename F> inline void blocks(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) f(Int<4>{}, i);
  for (; i + 2 <= n; i += 2) f(Int<2>{}, i);
  for (; i < n; ++i) f(Int<1>{}, i);
}

// the same for a list of at most 4 items given by its length
template <typename F> inline void block_of(int64_t n, F&& f) {
  switch (n) {
    case 4: f(Int<4>{}); break;
    case 3: f(Int<3>{}); break;
    case 2: f(Int<2>{}); break;
    default: f(Int<1>{}); break;
  }
}

struct Dims {
  int64_t B, heads, BH, C, G, M, V, N, CE, H, W, K, K2, P2;
  int64_t R;       // neighbourhood radius K / 2
  int64_t HW;      // positions per image
  int64_t HWq;     // ... rounded up to whole tiles
  int64_t margin;  // zeros on either side of a key/value row: R * W + R
  int64_t L;       // length of a key/value row: HWq + 2 * margin
};

// Neighbour offsets of the flattened image and the order in which the backward scatters into keys and
// values: blocks of up to 4 neighbours whose TX-wide windows do not overlap.
struct Geometry {
  std::vector<int64_t> off, order, block_end;
  explicit Geometry(const Dims& d) : off(d.K2) {
    for (int64_t a = 0; a < d.K; ++a)
      for (int64_t c = 0; c < d.K; ++c) off[a * d.K + c] = (a - d.R) * d.W + (c - d.R);
    // greedy, over the neighbours in column-major order (different rows are W apart)
    std::vector<int64_t> left;
    for (int64_t c = 0; c < d.K; ++c)
      for (int64_t a = 0; a < d.K; ++a) left.push_back(a * d.K + c);
    while (!left.empty()) {
      std::vector<int64_t> block, rest;
      for (int64_t j : left) {
        bool fits = block.size() < 4;
        for (int64_t i : block) fits = fits && std::abs(off[i] - off[j]) >= TX;
        (fits ? block : rest).push_back(j);
      }
      order.insert(order.end(), block.begin(), block.end());
      block_end.push_back(static_cast<int64_t>(order.size()));
      left.swap(rest);
    }
  }
};

template <typename T>
struct Buffers {
  using V = Vec<T>;
  std::vector<V> qt, A, cmax, S, smax, Wt, Tall, U, Pd, D, valid;
  std::vector<V> dOt, dP, r, X, dc, ds, dpt;
  Buffers(const Dims& d, bool dropout, bool backward)
      : qt(d.C * d.G), A(d.G * d.M * d.K2), cmax(d.G * d.M), S(d.G * d.V * d.K2), smax(d.G * d.V),
        Wt(d.G * d.V * d.M), Tall(d.G * d.V * d.M), U(d.M), Pd(d.V * d.M * d.K2),
        D(dropout && backward ? d.V * d.M * d.K2 : 0), valid(d.K2) {
    if (backward) {
      dOt.resize(d.C * d.V);
      dP.resize(d.V * d.M * d.K2);
      r.resize(d.G * d.V);
      X.resize(d.G * d.V * d.M);
      dc.resize(d.G * d.M * d.K2);
      ds.resize(d.G * d.V * d.K2);
      dpt.resize(d.V * d.K2 * d.P2);
    }
  }
};

template <typename T>
struct Attention {
  using V = Vec<T>;
  Dims d;
  const T *q, *k, *v, *ptab, *qe;  // q, k, v, qe point into the task's buffers
  const int32_t* idx;
  const Geometry* geo;
  bool dropout;
  double p_drop;
  uint32_t seed0, seed1;

  // row (channel ch, element m) of a key/value buffer, at the tile starting at position p0
  const T* row(const T* base, int64_t ch, int64_t m, int64_t p0) const {
    return base + (ch * d.M + m) * d.L + d.margin + p0;
  }

  // A, S, W, Pd (and, for the backward, D) of the tile (bh, positions p0 .. p0+TX). Returns the number
  // of lanes whose factorised normaliser underflowed.
  int64_t probabilities(Buffers<T>& b, int64_t bh, int64_t p0) const {
    const int64_t C = d.C, G = d.G, M = d.M, Vn = d.V, K = d.K, K2 = d.K2, P2 = d.P2, R = d.R;
    const int64_t* off = geo->off.data();
    const V ninf = splat(-std::numeric_limits<T>::infinity());
    const bool direct = G == 1 && M == 1;
    // validity of each neighbour per lane; lanes past the image are padding: valid, so that they stay
    // finite (their incoming gradient is zero)
    {
      V yv, xv, pad;
      for (int t = 0; t < TX; ++t) {
        const int64_t p = p0 + t;
        const bool real = p < d.HW;
        yv[t] = real ? T(p / d.W) : T(0);
        xv[t] = real ? T(p % d.W) : T(0);
        pad[t] = real ? T(0) : T(1);
      }
      for (int64_t a = 0; a < K; ++a) {
        const V yy = yv + T(a - R);
        const auto row_ok = (yy >= T(0)) & (yy < T(d.H));
        for (int64_t c = 0; c < K; ++c) {
          const V xx = xv + T(c - R);
          const auto ok = row_ok & (xx >= T(0)) & (xx < T(d.W));
          b.valid[a * K + c] = (ok != 0) | (pad != T(0)) ? splat(T(1)) : V{};
        }
      }
    }
    for (int64_t i = 0; i < C * G; ++i) b.qt[i] = loadu(q + i * d.HWq + p0);
    // content -> A = exp(c - max_j c); the direct softmax keeps the masked logit for the spatial pass
    for (int64_t m = 0; m < M; ++m) {
      blocks(G, [&](auto gb, int64_t g0) {
        constexpr int GB = decltype(gb)::value;
        V cm[GB];
        GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) cm[gg] = ninf;
        blocks(K2, [&](auto jb, int64_t j0) {
          constexpr int JB = decltype(jb)::value;
          V acc[GB][JB] = {};
          for (int64_t ch = 0; ch < C; ++ch) {
            const T* kr = row(k, ch, m, p0);
            V kv[JB];
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) kv[jj] = loadu(kr + off[j0 + jj]);
            GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) {
              const V qv = b.qt[ch * G + g0 + gg];
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) acc[gg][jj] += qv * kv[jj];
            }
          }
          GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg)
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) {
              const V logit = b.valid[j0 + jj] != 0 ? acc[gg][jj] : ninf;
              b.A[((g0 + gg) * M + m) * K2 + j0 + jj] = logit;
              cm[gg] = vmax(cm[gg], logit);
            }
        });
        GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) {
          V* Agm = &b.A[((g0 + gg) * M + m) * K2];
          if (!direct)
            for (int64_t j = 0; j < K2; ++j) Agm[j] = vexp(Agm[j] - cm[gg]);
          b.cmax[(g0 + gg) * M + m] = cm[gg];
        }
      });
    }
    // spatial -> S = exp(s - max_j s)
    for (int64_t vv = 0; vv < Vn; ++vv) {
      blocks(G, [&](auto gb, int64_t g0) {
        constexpr int GB = decltype(gb)::value;
        V sm[GB];
        GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) sm[gg] = ninf;
        blocks(K2, [&](auto jb, int64_t j0) {
          constexpr int JB = decltype(jb)::value;
          V acc[GB][JB] = {};
          const T* pt = ptab + (vv * K2 + j0) * P2;
          for (int64_t ch = 0; ch < P2; ++ch) {
            V qv[GB];
            GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) qv[gg] = b.qt[ch * G + g0 + gg];
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) {
              const V ptv = splat(pt[jj * P2 + ch]);
              GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) acc[gg][jj] += qv[gg] * ptv;
            }
          }
          GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg)
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) {
              const int64_t j = j0 + jj;
              // direct softmax (one query and one key element: the lifting layer): the whole logit here
              const V logit = b.valid[j] != 0 ? (direct ? acc[gg][jj] + b.A[j] : acc[gg][jj]) : ninf;
              b.S[((g0 + gg) * Vn + vv) * K2 + j] = logit;
              sm[gg] = vmax(sm[gg], logit);
            }
        });
        GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) {
          V* Sgv = &b.S[((g0 + gg) * Vn + vv) * K2];
          for (int64_t j = 0; j < K2; ++j) Sgv[j] = vexp(Sgv[j] - sm[gg]);
          b.smax[(g0 + gg) * Vn + vv] = sm[gg];
        }
      });
    }
    V bad = {};
    if (direct) {
      // P[v, j] = W[v] * A[j] * S[v, j] with A = 1 (0 outside the image), S = exp(logit - max), W = 1/Z:
      // the backward's formulas hold unchanged, and Z >= 1 cannot underflow
      for (int64_t vv = 0; vv < Vn; ++vv) {
        V Z = {};
        for (int64_t j = 0; j < K2; ++j) Z += b.S[vv * K2 + j];
        b.Wt[vv] = splat(T(1)) / Z;
      }
      for (int64_t j = 0; j < K2; ++j) b.A[j] = b.valid[j];
    } else {
      // T[g,v,m] = sum_j S A (a small matrix product per g and lane)
      for (int64_t g = 0; g < G; ++g) {
        blocks(Vn, [&](auto vb, int64_t v0) {
          constexpr int VB = decltype(vb)::value;
          blocks(M, [&](auto mb, int64_t m0) {
            constexpr int MB = decltype(mb)::value;
            V acc[VB][MB] = {};
            for (int64_t j = 0; j < K2; ++j) {
              V s[VB], a[MB];
              GEVIT_UNROLL for (int i = 0; i < VB; ++i) s[i] = b.S[(g * Vn + v0 + i) * K2 + j];
              GEVIT_UNROLL for (int i = 0; i < MB; ++i) a[i] = b.A[(g * M + m0 + i) * K2 + j];
              GEVIT_UNROLL for (int i = 0; i < VB; ++i)
                GEVIT_UNROLL for (int l = 0; l < MB; ++l) acc[i][l] += s[i] * a[l];
            }
            GEVIT_UNROLL for (int i = 0; i < VB; ++i)
              GEVIT_UNROLL for (int l = 0; l < MB; ++l) b.Tall[(g * Vn + v0 + i) * M + m0 + l] = acc[i][l];
          });
        });
      }
      // group factor and normaliser -> W (`bad` counts lanes whose T underflowed)
      const V tiny = splat(std::is_same<T, float>::value ? T(1e-30) : T(1e-290));
      V real_lane;
      for (int t = 0; t < TX; ++t) real_lane[t] = p0 + t < d.HW ? T(1) : T(0);
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t vv = 0; vv < Vn; ++vv) {
          const V sm = b.smax[g * Vn + vv];
          const V* Tgv = &b.Tall[(g * Vn + vv) * M];
          V umax = ninf, Z = {};
          for (int64_t m = 0; m < M; ++m) {
            const T* er = qe + (g * d.N + idx[(vv * G + g) * M + m]) * d.HWq + p0;
            const V u = loadu(er) + b.cmax[g * M + m] + sm;
            b.U[m] = u;
            umax = vmax(umax, u);
            bad += (Tgv[m] < tiny ? real_lane : V{});
          }
          for (int64_t m = 0; m < M; ++m) {
            b.U[m] = vexp(b.U[m] - umax);
            Z += b.U[m] * Tgv[m];
          }
          const V inv = splat(T(1)) / Z;
          for (int64_t m = 0; m < M; ++m) b.Wt[(g * Vn + vv) * M + m] = b.U[m] * inv;
        }
      }
    }
    // summed probabilities Pd[v,m,j] = sum_g W A S
    for (int64_t vv = 0; vv < Vn; ++vv) {
      blocks(M, [&](auto mb, int64_t m0) {
        constexpr int MB = decltype(mb)::value;
        blocks(K2, [&](auto jb, int64_t j0) {
          constexpr int JB = decltype(jb)::value;
          V acc[MB][JB] = {};
          for (int64_t g = 0; g < G; ++g) {
            V s[JB];
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) s[jj] = b.S[(g * Vn + vv) * K2 + j0 + jj];
            GEVIT_UNROLL for (int mm = 0; mm < MB; ++mm) {
              const V w = b.Wt[(g * Vn + vv) * M + m0 + mm];
              const V* Ar = &b.A[(g * M + m0 + mm) * K2 + j0];
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) acc[mm][jj] += (w * s[jj]) * Ar[jj];
            }
          }
          GEVIT_UNROLL for (int mm = 0; mm < MB; ++mm)
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) b.Pd[(vv * M + m0 + mm) * K2 + j0 + jj] = acc[mm][jj];
        });
      });
    }
    if (dropout) drop(b, bh, p0);
    return static_cast<int64_t>(hsum(bad));
  }

  // inverted dropout on Pd (16-bit keep decisions; the scale matches the quantised keep probability
  // exactly); the backward keeps the mask in D
  void drop(Buffers<T>& b, int64_t bh, int64_t p0) const {
    const int64_t M = d.M, Vn = d.V, K2 = d.K2;
    const uint32_t drop16 = static_cast<uint32_t>(p_drop * 65536.0 + 0.5);
    const U32 threshold = U32{} + drop16;
    const T keep_scale = T(65536.0 / (65536.0 - drop16));
    const bool keep_mask = !b.D.empty();
    U32 lane;
    for (int t = 0; t < TX; ++t) lane[t] = t;
    const int64_t pairs = (K2 + 1) / 2;  // one hash per two neighbours: its low and high 16 bits decide j and j + 1
    for (int64_t vm = 0; vm < Vn * M; ++vm) {
      V* P = &b.Pd[vm * K2];
      for (int64_t jp = 0; jp < pairs; ++jp) {
        const uint64_t base = ((static_cast<uint64_t>(bh) * Vn * M + vm) * pairs + jp) * d.HWq + p0;
        const U32 lo = lane + static_cast<uint32_t>(base);
        const U32 hi = U32{} + (static_cast<uint32_t>(base >> 32) * 0x9e3779b9U ^ seed1);
        const U32 bits = mix32((lo ^ seed0) + hi);
        for (int64_t half = 0; half < 2; ++half) {
          const int64_t j = 2 * jp + half;
          if (j >= K2) break;
          const U32 part = half ? bits >> 16 : bits & 0xffffU;
          const V keep = __builtin_convertvector(part >= threshold, V);  // -1 (keep) or 0
          const V Dj = keep * (-keep_scale);
          P[j] *= Dj;
          if (keep_mask) b.D[vm * K2 + j] = Dj;
        }
      }
    }
  }

  // out[ch][v] of the tile (the task's padded output rows)
  void output(Buffers<T>& b, T* out, int64_t p0) const {
    const int64_t M = d.M, Vn = d.V, K2 = d.K2;
    const int64_t* off = geo->off.data();
    blocks(d.C, [&](auto cb, int64_t c0) {
      constexpr int CB = decltype(cb)::value;
      blocks(Vn, [&](auto vb, int64_t v0) {
        constexpr int VB = decltype(vb)::value;
        V acc[CB][VB] = {};
        for (int64_t m = 0; m < M; ++m) {
          const T* vr[CB];
          GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) vr[cc] = row(v, c0 + cc, m, p0);
          for (int64_t j = 0; j < K2; ++j) {
            V x[CB], pd[VB];
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) x[cc] = loadu(vr[cc] + off[j]);
            GEVIT_UNROLL for (int i = 0; i < VB; ++i) pd[i] = b.Pd[((v0 + i) * M + m) * K2 + j];
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc)
              GEVIT_UNROLL for (int i = 0; i < VB; ++i) acc[cc][i] += x[cc] * pd[i];
          }
        }
        GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc)
          GEVIT_UNROLL for (int i = 0; i < VB; ++i) storeu(out + ((c0 + cc) * Vn + v0 + i) * d.HWq + p0, acc[cc][i]);
      });
    });
  }

  // dout, dq, dk, dv, dqe: the task's padded buffers (same layouts as q, k, v, qe; out for dout)
  void backward_tile(Buffers<T>& b, const T* dout, T* dq, T* dk, T* dv, T* dqe, int64_t p0) const {
    const int64_t C = d.C, G = d.G, M = d.M, Vn = d.V, K2 = d.K2, P2 = d.P2;
    const int64_t* off = geo->off.data();
    const bool direct = G == 1 && M == 1;
    for (int64_t i = 0; i < C * Vn; ++i) b.dOt[i] = loadu(dout + i * d.HWq + p0);
    // dP[v,m,j] = D * (dO_v . val_m(x + d_j))
    for (int64_t m = 0; m < M; ++m) {
      blocks(Vn, [&](auto vb, int64_t v0) {
        constexpr int VB = decltype(vb)::value;
        blocks(K2, [&](auto jb, int64_t j0) {
          constexpr int JB = decltype(jb)::value;
          V acc[VB][JB] = {};
          for (int64_t ch = 0; ch < C; ++ch) {
            const T* vr = row(v, ch, m, p0);
            V x[JB];
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) x[jj] = loadu(vr + off[j0 + jj]);
            GEVIT_UNROLL for (int i = 0; i < VB; ++i) {
              const V o = b.dOt[ch * Vn + v0 + i];
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) acc[i][jj] += o * x[jj];
            }
          }
          GEVIT_UNROLL for (int i = 0; i < VB; ++i)
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) {
              const int64_t e = ((v0 + i) * M + m) * K2 + j0 + jj;
              b.dP[e] = dropout ? acc[i][jj] * b.D[e] : acc[i][jj];
            }
        });
      });
    }
    // X[g,v,m] = sum_j A S dP and r[g,v] = sum_m W X = sum_{m,j} P dP
    for (int64_t g = 0; g < G; ++g) {
      blocks(Vn, [&](auto vb, int64_t v0) {
        constexpr int VB = decltype(vb)::value;
        blocks(M, [&](auto mb, int64_t m0) {
          constexpr int MB = decltype(mb)::value;
          V acc[VB][MB] = {};
          for (int64_t j = 0; j < K2; ++j) {
            V s[VB], a[MB];
            GEVIT_UNROLL for (int i = 0; i < VB; ++i) s[i] = b.S[(g * Vn + v0 + i) * K2 + j];
            GEVIT_UNROLL for (int l = 0; l < MB; ++l) a[l] = b.A[(g * M + m0 + l) * K2 + j];
            GEVIT_UNROLL for (int i = 0; i < VB; ++i)
              GEVIT_UNROLL for (int l = 0; l < MB; ++l) acc[i][l] += (s[i] * a[l]) * b.dP[((v0 + i) * M + m0 + l) * K2 + j];
          }
          GEVIT_UNROLL for (int i = 0; i < VB; ++i)
            GEVIT_UNROLL for (int l = 0; l < MB; ++l) b.X[(g * Vn + v0 + i) * M + m0 + l] = acc[i][l];
        });
      });
      for (int64_t vv = 0; vv < Vn; ++vv) {
        V rr = {};
        for (int64_t m = 0; m < M; ++m) rr += b.Wt[(g * Vn + vv) * M + m] * b.X[(g * Vn + vv) * M + m];
        b.r[g * Vn + vv] = rr;
      }
    }
    // dlogit = W A S (dP - r), summed over v (content: dc), over m (spatial: ds) and over j (group:
    // W (X - r T), with T from probabilities())
    for (int64_t g = 0; g < G; ++g) {
      blocks(M, [&](auto mb, int64_t m0) {
        constexpr int MB = decltype(mb)::value;
        blocks(K2, [&](auto jb, int64_t j0) {
          constexpr int JB = decltype(jb)::value;
          V acc[MB][JB] = {};
          for (int64_t vv = 0; vv < Vn; ++vv) {
            const V rr = b.r[g * Vn + vv];
            V s[JB];
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) s[jj] = b.S[(g * Vn + vv) * K2 + j0 + jj];
            GEVIT_UNROLL for (int l = 0; l < MB; ++l) {
              const V w = b.Wt[(g * Vn + vv) * M + m0 + l];
              const V* dPr = &b.dP[(vv * M + m0 + l) * K2 + j0];
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) acc[l][jj] += (w * s[jj]) * (dPr[jj] - rr);
            }
          }
          GEVIT_UNROLL for (int l = 0; l < MB; ++l)
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) {
              const int64_t e = ((g * M + m0 + l) * K2) + j0 + jj;
              b.dc[e] = b.A[e] * acc[l][jj];
            }
        });
      });
      blocks(Vn, [&](auto vb, int64_t v0) {
        constexpr int VB = decltype(vb)::value;
        V rr[VB];
        GEVIT_UNROLL for (int i = 0; i < VB; ++i) rr[i] = b.r[g * Vn + v0 + i];
        blocks(K2, [&](auto jb, int64_t j0) {
          constexpr int JB = decltype(jb)::value;
          V acc[VB][JB] = {};
          for (int64_t m = 0; m < M; ++m) {
            V a[JB];
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) a[jj] = b.A[(g * M + m) * K2 + j0 + jj];
            GEVIT_UNROLL for (int i = 0; i < VB; ++i) {
              const V w = b.Wt[(g * Vn + v0 + i) * M + m];
              const V* dPr = &b.dP[((v0 + i) * M + m) * K2 + j0];
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) acc[i][jj] += (w * a[jj]) * (dPr[jj] - rr[i]);
            }
          }
          GEVIT_UNROLL for (int i = 0; i < VB; ++i)
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) {
              const int64_t e = (g * Vn + v0 + i) * K2 + j0 + jj;
              b.ds[e] = b.S[e] * acc[i][jj];
            }
        });
      });
      if (d.N > 0 && !direct) {  // the group layer
        for (int64_t vv = 0; vv < Vn; ++vv) {
          const V rr = b.r[g * Vn + vv];
          for (int64_t m = 0; m < M; ++m) {
            const int64_t e = (g * Vn + vv) * M + m;
            const V de = b.Wt[e] * (b.X[e] - rr * b.Tall[e]);
            T* der = dqe + (g * d.N + idx[(vv * G + g) * M + m]) * d.HWq + p0;
            storeu(der, loadu(der) + de);
          }
        }
      }
    }
    // dq: content (over m, j), then the spatial channels (over v, j); each query tile stored once more
    blocks(C, [&](auto cb, int64_t c0) {
      constexpr int CB = decltype(cb)::value;
      blocks(G, [&](auto gb, int64_t g0) {
        constexpr int GB = decltype(gb)::value;
        V acc[CB][GB] = {};
        for (int64_t m = 0; m < M; ++m) {
          const T* kr[CB];
          GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) kr[cc] = row(k, c0 + cc, m, p0);
          for (int64_t j = 0; j < K2; ++j) {
            V x[CB], dcv[GB];
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) x[cc] = loadu(kr[cc] + off[j]);
            GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) dcv[gg] = b.dc[((g0 + gg) * M + m) * K2 + j];
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc)
              GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) acc[cc][gg] += x[cc] * dcv[gg];
          }
        }
        GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc)
          GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) storeu(dq + ((c0 + cc) * G + g0 + gg) * d.HWq + p0, acc[cc][gg]);
      });
    });
    blocks(P2, [&](auto cb, int64_t c0) {
      constexpr int CB = decltype(cb)::value;
      blocks(G, [&](auto gb, int64_t g0) {
        constexpr int GB = decltype(gb)::value;
        V acc[CB][GB];
        GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc)
          GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) acc[cc][gg] = loadu(dq + ((c0 + cc) * G + g0 + gg) * d.HWq + p0);
        for (int64_t vv = 0; vv < Vn; ++vv) {
          for (int64_t j = 0; j < K2; ++j) {
            const T* pt = ptab + (vv * K2 + j) * P2 + c0;
            V dsv[GB];
            GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) dsv[gg] = b.ds[((g0 + gg) * Vn + vv) * K2 + j];
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) {
              const V ptv = splat(pt[cc]);
              GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) acc[cc][gg] += ptv * dsv[gg];
            }
          }
        }
        GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc)
          GEVIT_UNROLL for (int gg = 0; gg < GB; ++gg) storeu(dq + ((c0 + cc) * G + g0 + gg) * d.HWq + p0, acc[cc][gg]);
      });
    });
    // dptab: lane-wise partial sums, reduced across lanes once per (batch x head) by the caller
    for (int64_t vv = 0; vv < Vn; ++vv) {
      blocks(K2, [&](auto jb, int64_t j0) {
        constexpr int JB = decltype(jb)::value;
        blocks(P2, [&](auto cb, int64_t c0) {
          constexpr int CB = decltype(cb)::value;
          V acc[JB][CB];
          GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj)
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) acc[jj][cc] = b.dpt[(vv * K2 + j0 + jj) * P2 + c0 + cc];
          for (int64_t g = 0; g < G; ++g) {
            V qv[CB];
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) qv[cc] = b.qt[(c0 + cc) * G + g];
            GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) {
              const V dsv = b.ds[(g * Vn + vv) * K2 + j0 + jj];
              GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) acc[jj][cc] += dsv * qv[cc];
            }
          }
          GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj)
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) b.dpt[(vv * K2 + j0 + jj) * P2 + c0 + cc] = acc[jj][cc];
        });
      });
    }
    // dv += Pd dO and dk += dc q at the shifted key positions, in the scatter order (see the top)
    const int64_t* order = geo->order.data();
    int64_t start = 0;
    for (const int64_t end : geo->block_end) {
      const int64_t* js = order + start;
      block_of(end - start, [&](auto jb) {
        constexpr int JB = decltype(jb)::value;
        for (int64_t m = 0; m < M; ++m) {
          blocks(C, [&](auto cb, int64_t c0) {
            constexpr int CB = decltype(cb)::value;
            V acc[CB][JB] = {};
            for (int64_t vv = 0; vv < Vn; ++vv) {
              V pd[JB];
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) pd[jj] = b.Pd[(vv * M + m) * K2 + js[jj]];
              GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) {
                const V o = b.dOt[(c0 + cc) * Vn + vv];
                GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) acc[cc][jj] += o * pd[jj];
              }
            }
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) {
              T* dvr = dv + (row(v, c0 + cc, m, p0) - v);
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) storeu(dvr + off[js[jj]], loadu(dvr + off[js[jj]]) + acc[cc][jj]);
            }
            V acck[CB][JB] = {};
            for (int64_t g = 0; g < G; ++g) {
              V dcv[JB];
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) dcv[jj] = b.dc[(g * M + m) * K2 + js[jj]];
              GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) {
                const V qv = b.qt[(c0 + cc) * G + g];
                GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) acck[cc][jj] += qv * dcv[jj];
              }
            }
            GEVIT_UNROLL for (int cc = 0; cc < CB; ++cc) {
              T* dkr = dk + (row(k, c0 + cc, m, p0) - k);
              GEVIT_UNROLL for (int jj = 0; jj < JB; ++jj) storeu(dkr + off[js[jj]], loadu(dkr + off[js[jj]]) + acck[cc][jj]);
            }
          });
        }
      });
      start = end;
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
  d.K = kernel;
  d.K2 = d.K * d.K;
  d.R = d.K / 2;
  d.HW = d.H * d.W;
  d.HWq = (d.HW + TX - 1) / TX * TX;
  d.margin = d.R * d.W + d.R;
  d.L = d.HWq + 2 * d.margin;
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
      : d(dims), q(d.C * d.G * d.HWq), k(d.C * d.M * d.L), v(k.size()), qe(d.G * d.N * d.HWq),
        out(d.C * d.V * d.HWq) {
    if (backward) {
      dq.resize(q.size()), dk.resize(k.size()), dv.resize(k.size()), dqe.resize(qe.size());
    }
  }
  // q, k, v of head `bh` plus their biases into the padded buffers (their padding was zeroed at
  // allocation and is never written), then the group scores qe[g][n] = q_g[P2:] . emb[n]
  void load(const T* qkv, const T* bias, const T* emb, int64_t bh) {
    const int64_t b = bh / d.heads, h = bh % d.heads, plane = d.C * d.G * d.HW;
    T* dst[3] = {q.data(), k.data() + d.margin, v.data() + d.margin};
    const int64_t stride[3] = {d.HWq, d.L, d.L};
    for (int64_t s = 0; s < 3; ++s) {
      const T* src = qkv + ((b * 3 + s) * d.heads + h) * plane;
      for (int64_t row = 0; row < d.C * d.G; ++row) {
        const T add = bias[(s * d.heads + h) * d.C + row / d.G];
        const T* in = src + row * d.HW;
        T* out = dst[s] + row * stride[s];
        for (int64_t i = 0; i < d.HW; ++i) out[i] = in[i] + add;
      }
    }
    const int64_t hw = d.HWq;
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

template <typename scalar_t>
Attention<scalar_t> make_attention(const Dims& d, const Geometry& geo, const torch::Tensor& ptab,
                                   const torch::Tensor& idx, double p_drop, int64_t seed0, int64_t seed1) {
  Attention<scalar_t> att;
  att.d = d;
  att.geo = &geo;
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

// body(begin_task) on every worker of torch's pool; each worker then takes tasks 0 .. n-1 from a shared
// counter (see the top of the file)
template <typename F> void for_each_task(int64_t n, F&& body) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(n, at::get_num_threads()));
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    if (begin < end) body([&] { return next.fetch_add(1, std::memory_order_relaxed); });
  });
}

void check_bias(const torch::Tensor& bias, const Dims& d) {
  TORCH_CHECK(bias.dim() == 3 && bias.size(0) == 3 && bias.size(1) == d.heads && bias.size(2) == d.C,
              "bias must be (3, heads, C)");
}

std::vector<torch::Tensor> forward(torch::Tensor qkv, torch::Tensor bias, torch::Tensor ptab, torch::Tensor emb,
                                   torch::Tensor idx, int64_t kernel, double p_drop, int64_t seed0, int64_t seed1) {
  const auto dtype = qkv.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fused group attention supports float32/float64");
  check(qkv, "qkv", dtype), check(bias, "bias", dtype), check(ptab, "ptab", dtype), check(emb, "emb", dtype);
  TORCH_CHECK(idx.scalar_type() == at::kInt && idx.is_contiguous(), "idx must be contiguous int32");
  const Dims d = make_dims(qkv, ptab, emb, idx, kernel);
  check_bias(bias, d);
  const Geometry geo(d);
  auto out = torch::empty({d.B, d.heads, d.C, d.V, d.H, d.W}, qkv.options());
  std::atomic<int64_t> bad{0};
  AT_DISPATCH_FLOATING_TYPES(dtype, "gevit_fused_attention_forward", [&] {
    auto att = make_attention<scalar_t>(d, geo, ptab, idx, p_drop, seed0, seed1);
    const scalar_t *x = qkv.data_ptr<scalar_t>(), *e = emb.data_ptr<scalar_t>(), *bi = bias.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_task(d.BH, [&](auto next_task) {
      Buffers<scalar_t> b(d, att.dropout, false);
      Local<scalar_t> l(d, false);
      auto task = att;
      point_at(task, l);
      int64_t local_bad = 0;
      for (int64_t bh; (bh = next_task()) < d.BH;) {
        l.load(x, bi, e, bh);
        for (int64_t p0 = 0; p0 < d.HWq; p0 += TX) {
          local_bad += task.probabilities(b, bh, p0);
          task.output(b, l.out.data(), p0);
        }
        scalar_t* dst = o + bh * d.C * d.V * d.HW;
        for (int64_t i = 0; i < d.C * d.V; ++i)
          std::memcpy(dst + i * d.HW, &l.out[i * d.HWq], d.HW * sizeof(scalar_t));
      }
      bad += local_bad;
    });
  });
  return {out, torch::tensor(bad.load(), torch::kLong)};
}

std::vector<torch::Tensor> backward(torch::Tensor dout, torch::Tensor qkv, torch::Tensor bias, torch::Tensor ptab,
                                    torch::Tensor emb, torch::Tensor idx, int64_t kernel, double p_drop, int64_t seed0,
                                    int64_t seed1) {
  const auto dtype = qkv.scalar_type();
  dout = dout.contiguous();
  check(dout, "grad", dtype);
  const Dims d = make_dims(qkv, ptab, emb, idx, kernel);
  check_bias(bias, d);
  const Geometry geo(d);
  auto dqkv = torch::empty_like(qkv);
  auto dptab = torch::empty({d.BH, d.V, d.K2, d.P2}, qkv.options());
  auto demb = torch::empty({d.BH, d.N, d.CE}, qkv.options());
  auto dbias = torch::empty({d.B, 3, d.heads, d.C}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "gevit_fused_attention_backward", [&] {
    using V = Vec<scalar_t>;
    auto att = make_attention<scalar_t>(d, geo, ptab, idx, p_drop, seed0, seed1);
    const scalar_t *x = qkv.data_ptr<scalar_t>(), *e = emb.data_ptr<scalar_t>(), *g = dout.data_ptr<scalar_t>();
    const scalar_t* bi = bias.data_ptr<scalar_t>();
    scalar_t *pg = dqkv.data_ptr<scalar_t>(), *pp = dptab.data_ptr<scalar_t>(), *pe = demb.data_ptr<scalar_t>();
    scalar_t* pb = dbias.data_ptr<scalar_t>();
    const int64_t hw = d.HWq, plane = d.C * d.G * d.HW;
    // one (batch, head) per task: keys/values of a head are its own, so the scatter needs no atomics
    for_each_task(d.BH, [&](auto next_task) {
      Buffers<scalar_t> b(d, att.dropout, true);
      Local<scalar_t> l(d, true);
      auto task = att;
      point_at(task, l);
      for (int64_t bh; (bh = next_task()) < d.BH;) {
        l.load(x, bi, e, bh);
        // the incoming gradient padded to whole tiles (l.out's padding lanes stay zero)
        const scalar_t* go = g + bh * d.C * d.V * d.HW;
        for (int64_t i = 0; i < d.C * d.V; ++i)
          std::memcpy(&l.out[i * d.HWq], go + i * d.HW, d.HW * sizeof(scalar_t));
        std::fill(l.dk.begin(), l.dk.end(), scalar_t(0));
        std::fill(l.dv.begin(), l.dv.end(), scalar_t(0));
        std::fill(l.dqe.begin(), l.dqe.end(), scalar_t(0));
        std::fill(b.dpt.begin(), b.dpt.end(), V{});
        for (int64_t p0 = 0; p0 < d.HWq; p0 += TX) {
          task.probabilities(b, bh, p0);
          task.backward_tile(b, l.out.data(), l.dq.data(), l.dk.data(), l.dv.data(), l.dqe.data(), p0);
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
        // dq, dk, dv unpadded, and the bias gradients: their sums over (g, position)
        const int64_t bb = bh / d.heads, h = bh % d.heads;
        const scalar_t* src[3] = {l.dq.data(), l.dk.data() + d.margin, l.dv.data() + d.margin};
        const int64_t stride[3] = {d.HWq, d.L, d.L};
        for (int64_t s = 0; s < 3; ++s) {
          scalar_t* dst = pg + ((bb * 3 + s) * d.heads + h) * plane;
          scalar_t* db = pb + ((bb * 3 + s) * d.heads + h) * d.C;
          std::fill(db, db + d.C, scalar_t(0));
          for (int64_t row = 0; row < d.C * d.G; ++row) {
            const scalar_t* in = src[s] + row * stride[s];
            scalar_t sum = 0;
            for (int64_t i = 0; i < d.HW; ++i) sum += in[i];
            std::memcpy(dst + row * d.HW, in, d.HW * sizeof(scalar_t));
            db[row / d.G] += sum;
          }
        }
      }
    });
  });
  // the per-task partial sums of dbias, dptab and demb, reduced serially (a few tens of thousands of adds)
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
  return {dqkv, reduce(dbias), reduce(dptab), reduce(demb)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused group attention forward");
  m.def("backward", &backward, "fused group attention backward");
  m.attr("TILE") = TX;
}
