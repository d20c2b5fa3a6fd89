// The CUDA engine's kernels (issue #16), compiled at run time by NVRTC (`cuda/module.rs`)
// with --fmad=false, so that a product and a sum are rounded as the CPU's separate
// operations are, and the CPU's explicit fused multiply-adds are fmaf here.
//
// Each kernel is the twin of the CPU kernel of the same name in `backend/` (the shapes and
// the backward math are documented there); comments say where the GPU's order of
// summation differs. Shape alphabet: N = B*T rows, C = n_embd, V colours.

typedef long long i64;
typedef unsigned long long u64;

// ---- elementwise -------------------------------------------------------------------

extern "C" __global__ void fill_f32(float* x, float v, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] = v;
}

// x += y
extern "C" __global__ void add_inplace(float* x, const float* y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] += y[i];
}

// x *= f
extern "C" __global__ void scale_f32(float* x, float f, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] *= f;
}

// ---- reductions ----------------------------------------------------------------------

__device__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

__device__ float warp_max_f32(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum over a block of 256 threads (thread 0 gets it; every thread must call).
__device__ double block_sum_f64(double v) {
    __shared__ double part[8];
    v = warp_sum_f64(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    double s = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += part[w];
    __syncthreads();
    return s;
}

// partial[block] = the sum of squares of this block's grid-stride share of x (f64). The
// host adds the partials in block order: deterministic for a given grid (the CPU sums in
// chunks of 65,536 instead, so the last bits differ).
extern "C" __global__ void sum_squares_partial(const float* x, i64 n, double* partial) {
    double s = 0.0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = block_sum_f64(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// ---- AdamW (optim.rs) ----------------------------------------------------------------

extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, i64 n, float b1, float b2,
                                 float eps, float bc2_sqrt, float step_size) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float gi = g[i];
        m[i] += (gi - m[i]) * (1.0f - b1);
        v[i] = v[i] * b2 + (1.0f - b2) * gi * gi;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

// ---- RMS norm (norm.rs) --------------------------------------------------------------

// One warp per row: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps) (sum in f64).
extern "C" __global__ void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, i64 n, int c,
                                           double eps) {
    i64 row = blockIdx.x * (i64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n) return;
    const float* x = inp + row * c;
    double ss = 0.0;
    for (int j = lane; j < c; j += 32) ss += (double)x[j] * (double)x[j];
    ss = warp_sum_f64(ss);
    ss = __shfl_sync(0xffffffffu, ss, 0);
    float rs = (float)(1.0 / sqrt(ss / c + eps));
    if (lane == 0) rstd[row] = rs;
    float* o = out + row * c;
    for (int j = lane; j < c; j += 32) o[j] = x[j] * rs * w[j];
}

// One warp per row: dinp += r w dy - x k, k = (sum_j (dy_j w_j) x_j) r^3 / C.
extern "C" __global__ void rmsnorm_backward_dx(float* dinp, const float* dout, const float* inp, const float* rstd,
                                               const float* w, i64 n, int c) {
    i64 row = blockIdx.x * (i64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= n) return;
    const float* x = inp + row * c;
    const float* dy = dout + row * c;
    float r = rstd[row];
    double dot = 0.0;
    for (int j = lane; j < c; j += 32) dot += (double)(dy[j] * w[j]) * (double)x[j];
    dot = warp_sum_f64(dot);
    dot = __shfl_sync(0xffffffffu, dot, 0);
    double r64 = (double)r;
    float k = (float)(dot * (r64 * r64 * r64) / c);
    float* dx = dinp + row * c;
    for (int j = lane; j < c; j += 32) dx[j] += r * w[j] * dy[j] - x[j] * k;
}

// dw[j] += sum over rows of dy x r, in two passes summed as the CPU sums them (so the
// result is the CPU's to the bit): partial[chunk, j] = the f64 sum over the chunk's 64 rows,
// then dw[j] += (float)(the partials added in chunk order).
extern "C" __global__ void rmsnorm_backward_dw_partial(double* partial, const float* dout, const float* inp,
                                                       const float* rstd, i64 n, int c) {
    i64 chunks = (n + 63) / 64;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < chunks * c; e += (i64)gridDim.x * blockDim.x) {
        i64 ch = e / c, j = e % c, end = (ch + 1) * 64 < n ? (ch + 1) * 64 : n;
        double acc = 0.0;
        for (i64 row = ch * 64; row < end; row++) acc += (double)(dout[row * c + j] * inp[row * c + j] * rstd[row]);
        partial[e] = acc;
    }
}

extern "C" __global__ void rmsnorm_backward_dw_finish(float* dw, const double* partial, i64 chunks, int c) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < c; j += gridDim.x * blockDim.x) {
        double s = 0.0;
        for (i64 ch = 0; ch < chunks; ch++) s += partial[ch * c + j];
        dw[j] += (float)s;
    }
}

// ---- activations (act.rs, math.rs) ---------------------------------------------------

// math.rs's exp, operation for operation (its fused multiply-adds are fmaf).
__device__ float exp_cpu(float x) {
    bool tiny = x < -60.0f;
    x = fminf(fmaxf(x, -87.0f), 88.0f);
    float t = fmaf(x, 1.44269504088896341f, 12582912.0f);
    float nn = t - 12582912.0f;
    float r = fmaf(-nn, -2.121944400e-4f, fmaf(-nn, 0.693359375f, x));
    float p = 1.9875691e-4f;
    p = fmaf(p, r, 1.3981999e-3f);
    p = fmaf(p, r, 8.333452e-3f);
    p = fmaf(p, r, 4.1665796e-2f);
    p = fmaf(p, r, 1.6666665e-1f);
    p = fmaf(p, r, 5e-1f);
    float y = fmaf(p * r, r, r + 1.0f);
    int ni = __float_as_int(t) - 0x4B400000;
    float res = y * __int_as_float((ni + 127) << 23);
    return tiny ? 0.0f : res;
}

// act: 0 quick_gelu, 1 gelu_tanh, 2 relu (backend::Activation's order)
__device__ float act_apply(int act, float x) {
    if (act == 0) return x / (1.0f + exp_cpu(-1.702f * x));
    if (act == 1) {
        float u = 0.7978846f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (2.0f - 2.0f / (exp_cpu(2.0f * u) + 1.0f));
    }
    return fmaxf(x, 0.0f);
}

__device__ float act_derivative(int act, float x) {
    if (act == 0) {
        float s = 1.0f / (1.0f + exp_cpu(-1.702f * x));
        return s + 1.702f * x * s * (1.0f - s);
    }
    if (act == 1) {
        float u = 0.7978846f * (x + 0.044715f * x * x * x);
        float t = 1.0f - 2.0f / (exp_cpu(2.0f * u) + 1.0f);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.7978846f * (1.0f + 3.0f * 0.044715f * x * x);
    }
    return x > 0.0f ? 1.0f : 0.0f;
}

extern "C" __global__ void act_forward(int act, float* out, const float* inp, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = act_apply(act, inp[i]);
}

extern "C" __global__ void act_inplace(int act, float* x, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = act_apply(act, x[i]);
}

// dinp = act'(inp) dout (relu: dout where inp > 0)
extern "C" __global__ void act_backward(int act, float* dinp, const float* dout, const float* inp, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float x = inp[i];
        dinp[i] = act == 2 ? (x > 0.0f ? dout[i] : 0.0f) : dout[i] * act_derivative(act, x);
    }
}

// ---- bias gradient (matmul.rs) -------------------------------------------------------

// db[j] += sum over the m rows of dy[., j], in f32 and in the CPU's order (to the bit):
// partial[chunk, j] = the sum over the chunk's 64 rows, then db[j] += the partials added in
// chunk order.
extern "C" __global__ void bias_backward_partial(float* partial, const float* dy, i64 m, int n) {
    i64 chunks = (m + 63) / 64;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < chunks * n; e += (i64)gridDim.x * blockDim.x) {
        i64 ch = e / n, j = e % n, end = (ch + 1) * 64 < m ? (ch + 1) * 64 : m;
        float acc = 0.0f;
        for (i64 r = ch * 64; r < end; r++) acc += dy[r * n + j];
        partial[e] = acc;
    }
}

extern "C" __global__ void bias_backward_finish(float* db, const float* partial, i64 chunks, int n) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (i64 ch = 0; ch < chunks; ch++) s += partial[ch * n + j];
        db[j] += s;
    }
}

// ---- dropout (dropout.rs) ------------------------------------------------------------

__device__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// x[i] *= scale where the hash of (key, i) clears the threshold, else 0: the CPU's mask.
extern "C" __global__ void dropout(float* x, i64 n, u64 key, unsigned int threshold, float scale) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        u64 h = mix64(key + (u64)i * 0x9e3779b97f4a7c15ull);
        x[i] *= (unsigned int)(h >> 32) >= threshold ? scale : 0.0f;
    }
}

// ---- cross-entropy (loss.rs) ---------------------------------------------------------

// One block of 256 threads per row: loss[row] = -ln p(target) w; the row becomes the
// gradient w (softmax - onehot). z sums in f64 (the CPU sums in order; the last bits of z
// differ).
extern "C" __global__ void cross_entropy_fused(float* logits, const unsigned int* targets, const float* weights,
                                               double* loss, int v) {
    __shared__ float smax[8];
    __shared__ float bmax;
    __shared__ double bz;
    i64 row = blockIdx.x;
    float* x = logits + row * v;
    float w = weights[row];
    if (w == 0.0f) {
        for (int j = threadIdx.x; j < v; j += blockDim.x) x[j] = 0.0f;
        if (threadIdx.x == 0) loss[row] = 0.0;
        return;
    }
    float mx = -__int_as_float(0x7f800000);  // -inf
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, x[j]);
    mx = warp_max_f32(mx);
    if ((threadIdx.x & 31) == 0) smax[threadIdx.x >> 5] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = smax[0];
        for (int k = 1; k < (int)(blockDim.x >> 5); k++) m = fmaxf(m, smax[k]);
        bmax = m;
    }
    __syncthreads();
    mx = bmax;
    double z = 0.0;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        double e = exp((double)(x[j] - mx));
        z += e;
        x[j] = (float)e;
    }
    z = block_sum_f64(z);
    if (threadIdx.x == 0) bz = z;
    __syncthreads();
    z = bz;
    unsigned int tg = targets[row];
    double target_p = (double)x[tg] / z;
    __syncthreads();
    float inv = (float)(1.0 / z);
    for (int j = threadIdx.x; j < v; j += blockDim.x) x[j] *= inv * w;
    __syncthreads();
    if (threadIdx.x == 0) {
        x[tg] -= w;
        loss[row] = -log(target_p) * (double)w;
    }
}

// ---- embeddings (embed.rs) -----------------------------------------------------------

// axis: 0 slot (p), 1 row (p / width), 2 column (p % width)
__device__ i64 axis_of(int axis, int width, i64 p) {
    return axis == 0 ? p : (axis == 1 ? p / width : p % width);
}

// out (N, C) = s_i wte[tokens_i] + the rows of up to two position tables (table1 may be
// null) for slots pos0 + i % t. One thread per element.
extern "C" __global__ void embed_forward(float* out, const unsigned int* tokens, const float* wte,
                                         const float* scale, const float* table0, int axis0,
                                         const float* table1, int axis1, int width, i64 n, int t, i64 pos0,
                                         int c) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n * c; e += (i64)gridDim.x * blockDim.x) {
        i64 i = e / c;
        int j = (int)(e % c);
        i64 pos = pos0 + i % t;
        float s = scale ? scale[i] : 1.0f;
        float te = wte[(i64)tokens[i] * c + j];
        float o = s == 1.0f ? te : s * te;
        if (table0) o += table0[axis_of(axis0, width, pos) * c + j];
        if (table1) o += table1[axis_of(axis1, width, pos) * c + j];
        out[e] = o;
    }
}

// The token rows' gradient: dwte[tokens_i] += s_i dout_i, by atomic adds (their order
// varies from run to run: the last bits of a colour seen many times differ).
extern "C" __global__ void embed_backward_tokens(float* dwte, const float* dout, const unsigned int* tokens,
                                                 const float* scale, i64 n, int c) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n * c; e += (i64)gridDim.x * blockDim.x) {
        i64 i = e / c;
        float s = scale ? scale[i] : 1.0f;
        if (s != 0.0f) atomicAdd(&dwte[(i64)tokens[i] * c + (e % c)], s * dout[e]);
    }
}

// A position table's gradient: dtable[r, j] += dout of every row i whose slot i % t the
// table reads at r (positions from 0), added one by one in row order as the CPU adds them.
// One thread per (r, j); it visits only the slots of r: slot r, row r's `width` slots, or
// column r's slots r, r + width, ...
extern "C" __global__ void embed_backward_table(float* dtable, int rows, int axis, int width, const float* dout,
                                                i64 n, int t, int c) {
    i64 batches = n / t;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < (i64)rows * c; e += (i64)gridDim.x * blockDim.x) {
        i64 r = e / c;
        int j = (int)(e % c);
        i64 p0 = axis == 1 ? r * width : r;
        i64 p1 = axis == 0 ? r + 1 : (axis == 1 ? (r + 1) * width : t);
        i64 step = axis == 2 ? width : 1;
        if (p1 > t) p1 = t;
        float acc = dtable[e];
        for (i64 bi = 0; bi < batches; bi++)
            for (i64 p = p0; p < p1; p += step) acc += dout[(bi * t + p) * c + j];
        dtable[e] = acc;
    }
}

// ---- rope_2d (rope.rs) ---------------------------------------------------------------

// Rotates q and k of qkv (N, 3C) for slots pos0 + i % t: in each head, the first hs/2
// values by the row's angles and the rest by the column's, as pairs (j, j + hs/4) of each
// half; angle a theta^(-j/m), m = hs/4; sign -1 rotates back. One thread per (row, q|k,
// head, half, pair).
extern "C" __global__ void rope(float* qkv, i64 n, int t, i64 pos0, int nh, int hs, int width, double theta,
                                double sign) {
    int m = hs / 4;
    int c = nh * hs;
    i64 per_row = 2LL * nh * 2 * m;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n * per_row; e += (i64)gridDim.x * blockDim.x) {
        i64 i = e / per_row;
        int rest = (int)(e % per_row);
        int j = rest % m;
        int half = (rest / m) % 2;
        int head = (rest / (2 * m)) % nh;
        int part = rest / (2 * m * nh);
        i64 p = pos0 + i % t;
        i64 a = half == 0 ? p / width : p % width;
        double phi = (double)a * pow(theta, -(double)j / (double)m);
        float cs = (float)cos(phi), sn = (float)(sign * sin(phi));
        float* u = qkv + i * 3 * c + part * c + head * hs + half * 2 * m;
        float x0 = u[j], y0 = u[j + m];
        u[j] = x0 * cs - y0 * sn;
        u[j + m] = y0 * cs + x0 * sn;
    }
}

// ---- pooling (pool.rs) ---------------------------------------------------------------

// out (B, C) = the mean over t of x (B, T, C) (f64 sums, in order). One thread per (b, j).
extern "C" __global__ void mean_over_positions(float* out, const float* x, int b, int t, int c) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < b * c; e += gridDim.x * blockDim.x) {
        int bi = e / c, j = e % c;
        double acc = 0.0;
        for (int r = 0; r < t; r++) acc += (double)x[((i64)bi * t + r) * c + j];
        out[e] = (float)(acc / t);
    }
}

// dx (B, T, C) += dmean (B, C) / T at every position.
extern "C" __global__ void mean_over_positions_backward(float* dx, const float* dmean, int b, int t, int c) {
    i64 n = (i64)b * t * c;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        i64 bi = e / ((i64)t * c);
        dx[e] += dmean[bi * c + e % c] / (float)t;
    }
}

// ---- softmax attention (attention/forward.rs, backward.rs, mask.rs) -------------------
//
// One warp per (batch row, head, query row) for the forward and dq, one per key row for dk
// and dv: each lane holds the elements lane, lane + 32, ... of a head's vector (hs <= 128),
// and a dot product is a warp sum. The softmax is online over the visible keys in order
// (the CPU's is block-wise, so the last bits differ); exp is math.rs's.
//
// A sequence view is (base, offset, batch stride, row stride), as attention::Seq; element
// j of head h of row r of batch row b is base[offset + b bs + r rs + h hs + j].
// Masks (attention::Mask): kind 0 causal, 1 full, 2 local_2d (rows, cols, width, causal).
// Query row r of a call with tk keys is slot tk - t + r.

#define MAXV 4

struct Mask {
    int kind, rows, cols, width, causal;
};

__device__ bool visible(Mask m, i64 p, i64 s) {
    if (m.kind == 0) return s <= p;
    if (m.kind == 1) return true;
    i64 rp = p / m.width, cp = p % m.width, rs = s / m.width, cs = s % m.width;
    i64 dc = cp > cs ? cp - cs : cs - cp;
    if (dc > m.cols) return false;
    if (m.causal) return s <= p && rp - rs <= m.rows;
    i64 dr = rp > rs ? rp - rs : rs - rp;
    return dr <= m.rows;
}

// The keys [lo, hi) that query slot p may see, of the first `tk` (attention::Mask::key_span).
__device__ void key_span(Mask m, i64 p, i64 tk, i64* lo, i64* hi) {
    if (m.kind == 0) { *lo = 0; *hi = p + 1 < tk ? p + 1 : tk; return; }
    if (m.kind == 1) { *lo = 0; *hi = tk; return; }
    i64 r = p / m.width;
    i64 a = (r > m.rows ? r - m.rows : 0) * m.width;
    i64 e = m.causal ? p + 1 : (r + m.rows + 1) * m.width;
    *lo = a < tk ? a : tk;
    *hi = e < tk ? e : tk;
}

// The query slots [lo, hi) of the first t that may see key slot s (Mask::query_span).
__device__ void query_span(Mask m, i64 s, i64 t, i64* lo, i64* hi) {
    if (m.kind == 0) { *lo = s < t ? s : t; *hi = t; return; }
    if (m.kind == 1) { *lo = 0; *hi = t; return; }
    i64 r = s / m.width;
    i64 a = m.causal ? s : (r > m.rows ? r - m.rows : 0) * m.width;
    i64 e = (r + m.rows + 1) * m.width;
    *lo = a < t ? a : t;
    *hi = e < t ? e : t;
}

__device__ float warp_allsum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// This warp's (batch row, head, row) of a launch of one warp per (b, h, row) over (B, nh, T);
// false for the warps past the end (whole warps: the return that follows is warp-uniform).
__device__ bool warp_row(int b, int nh, int t, int* bi, int* h, int* r) {
    i64 w = blockIdx.x * (i64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (w >= (i64)b * nh * t) return false;
    *r = (int)(w % t);
    *h = (int)((w / t) % nh);
    *bi = (int)(w / ((i64)t * nh));
    return true;
}

// Loads this lane's share of a head's vector.
__device__ void load_head(float* dst, const float* src, int hs, int lane) {
    for (int i = 0; i < MAXV; i++) {
        int j = lane + 32 * i;
        dst[i] = j < hs ? src[j] : 0.0f;
    }
}

__device__ float dot_head(const float* a, const float* src, int hs, int lane) {
    float s = 0.0f;
    for (int i = 0; i < MAXV; i++) {
        int j = lane + 32 * i;
        if (j < hs) s += a[i] * src[j];
    }
    return warp_allsum(s);
}

// The dropout factor of probability (b, h, query slot p, key slot s): the CPU's element
// ((b nh + h) tk + p) tk + s of the call's mask (attention::AttnDims::dropout).
__device__ float drop_factor(int has, u64 key, unsigned int threshold, float scale, i64 index) {
    if (!has) return 1.0f;
    u64 hsh = mix64(key + (u64)index * 0x9e3779b97f4a7c15ull);
    return (unsigned int)(hsh >> 32) >= threshold ? scale : 0.0f;
}

// out (B, T, nh hs) = softmax(q k^T scale, masked) v, with dropout of the probabilities;
// lse (B, nh, T) = max + ln(sum exp) of each query row's scaled scores (rows that see no
// key: out 0, lse -inf as the CPU's).
extern "C" __global__ void attention_forward(float* out, float* lse, const float* q, i64 q_off, i64 q_bs, i64 q_rs,
                                             const float* k, i64 k_off, i64 k_bs, i64 k_rs, const float* v, i64 v_off,
                                             i64 v_bs, i64 v_rs, int b, int t, int tk, int nh, int hs, Mask mask,
                                             float scale, int drop, u64 drop_key, unsigned int drop_threshold,
                                             float drop_scale) {
    int bi, h, r, lane = threadIdx.x & 31;
    if (!warp_row(b, nh, t, &bi, &h, &r)) return;
    i64 p = (i64)tk - t + r;
    float qr[MAXV], acc[MAXV];
    load_head(qr, q + q_off + bi * q_bs + r * q_rs + h * hs, hs, lane);
    for (int i = 0; i < MAXV; i++) acc[i] = 0.0f;
    float m = -__int_as_float(0x7f800000), l = 0.0f;
    i64 lo, hi;
    key_span(mask, p, tk, &lo, &hi);
    for (i64 s = lo; s < hi; s++) {
        if (!visible(mask, p, s)) continue;
        float sc = dot_head(qr, k + k_off + bi * k_bs + s * k_rs + h * hs, hs, lane) * scale;
        float m_new = fmaxf(m, sc);
        float corr = exp_cpu(m - m_new), e = exp_cpu(sc - m_new);
        l = l * corr + e;
        float f = e * drop_factor(drop, drop_key, drop_threshold, drop_scale, (((i64)bi * nh + h) * tk + p) * tk + s);
        const float* vs = v + v_off + bi * v_bs + s * v_rs + h * hs;
        for (int i = 0; i < MAXV; i++) {
            int j = lane + 32 * i;
            if (j < hs) acc[i] = acc[i] * corr + f * vs[j];
        }
        m = m_new;
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float* o = out + ((i64)bi * t + r) * nh * hs + h * hs;
    for (int i = 0; i < MAXV; i++) {
        int j = lane + 32 * i;
        if (j < hs) o[j] = acc[i] * inv;
    }
    if (lane == 0) lse[((i64)bi * nh + h) * t + r] = l > 0.0f ? m + logf(l) : m;
}

// delta (B, nh, T) = the sum over a head of dout * out (the backward's D).
extern "C" __global__ void attention_backward_delta(float* delta, const float* dout, const float* out, int b, int t,
                                                    int nh, int hs) {
    int bi, h, r, lane = threadIdx.x & 31;
    if (!warp_row(b, nh, t, &bi, &h, &r)) return;
    i64 at = ((i64)bi * t + r) * nh * hs + h * hs;
    float s = 0.0f;
    for (int j = lane; j < hs; j += 32) s += dout[at + j] * out[at + j];
    s = warp_allsum(s);
    if (lane == 0) delta[((i64)bi * nh + h) * t + r] = s;
}

// dq of each query row (written into dqkv (B, T, 3C), part 0): dq = scale sum_s dS_rs k_s,
// dS = P (dP - D), P = exp(q.k scale - lse), dP = (dout . v_s) x the dropout factor.
// Training calls only (tk = t).
extern "C" __global__ void attention_backward_dq(float* dqkv, const float* dout, const float* lse, const float* delta,
                                                 const float* qkv, int b, int t, int nh, int hs, Mask mask,
                                                 float scale, int drop, u64 drop_key, unsigned int drop_threshold,
                                                 float drop_scale) {
    int bi, h, r, lane = threadIdx.x & 31;
    if (!warp_row(b, nh, t, &bi, &h, &r)) return;
    i64 c = (i64)nh * hs, row3 = 3 * c;
    const float* base = qkv + (i64)bi * t * row3;
    float qr[MAXV], dor[MAXV], dq[MAXV];
    load_head(qr, base + r * row3 + h * hs, hs, lane);
    load_head(dor, dout + ((i64)bi * t + r) * c + h * hs, hs, lane);
    for (int i = 0; i < MAXV; i++) dq[i] = 0.0f;
    i64 bh = (i64)bi * nh + h;
    float l = lse[bh * t + r], dd = delta[bh * t + r];
    i64 lo, hi;
    key_span(mask, r, t, &lo, &hi);
    for (i64 s = lo; s < hi; s++) {
        if (!visible(mask, r, s)) continue;
        const float* ks = base + s * row3 + c + h * hs;
        float pr = exp_cpu(dot_head(qr, ks, hs, lane) * scale - l);
        float f = drop_factor(drop, drop_key, drop_threshold, drop_scale, (bh * t + r) * t + s);
        float dp = dot_head(dor, base + s * row3 + 2 * c + h * hs, hs, lane) * f;
        float ds = pr * (dp - dd);
        for (int i = 0; i < MAXV; i++) {
            int j = lane + 32 * i;
            if (j < hs) dq[i] += ds * ks[j];
        }
    }
    float* o = dqkv + ((i64)bi * t + r) * row3 + h * hs;
    for (int i = 0; i < MAXV; i++) {
        int j = lane + 32 * i;
        if (j < hs) o[j] = dq[i] * scale;
    }
}

// dk and dv of each key row (parts 1 and 2 of dqkv): dv = sum_r P~_rs dout_r, dk = scale
// sum_r dS_rs q_r over the query rows that see key s.
extern "C" __global__ void attention_backward_dkdv(float* dqkv, const float* dout, const float* lse,
                                                   const float* delta, const float* qkv, int b, int t, int nh, int hs,
                                                   Mask mask, float scale, int drop, u64 drop_key,
                                                   unsigned int drop_threshold, float drop_scale) {
    int bi, h, s, lane = threadIdx.x & 31;
    if (!warp_row(b, nh, t, &bi, &h, &s)) return;
    i64 c = (i64)nh * hs, row3 = 3 * c;
    const float* base = qkv + (i64)bi * t * row3;
    float ks[MAXV], vs[MAXV], dk[MAXV], dv[MAXV];
    load_head(ks, base + s * row3 + c + h * hs, hs, lane);
    load_head(vs, base + s * row3 + 2 * c + h * hs, hs, lane);
    for (int i = 0; i < MAXV; i++) dk[i] = dv[i] = 0.0f;
    i64 bh = (i64)bi * nh + h;
    i64 lo, hi;
    query_span(mask, s, t, &lo, &hi);
    for (i64 r = lo; r < hi; r++) {
        if (!visible(mask, r, s)) continue;
        const float* qr = base + r * row3 + h * hs;
        const float* dor = dout + ((i64)bi * t + r) * c + h * hs;
        float pr = exp_cpu(dot_head(ks, qr, hs, lane) * scale - lse[bh * t + r]);
        float f = drop_factor(drop, drop_key, drop_threshold, drop_scale, (bh * t + r) * t + s);
        float ds = pr * (dot_head(vs, dor, hs, lane) * f - delta[bh * t + r]);
        for (int i = 0; i < MAXV; i++) {
            int j = lane + 32 * i;
            if (j < hs) {
                dv[i] += pr * f * dor[j];
                dk[i] += ds * qr[j];
            }
        }
    }
    float* o = dqkv + ((i64)bi * t + s) * row3 + h * hs;
    for (int i = 0; i < MAXV; i++) {
        int j = lane + 32 * i;
        if (j < hs) {
            o[c + j] = dk[i] * scale;
            o[2 * c + j] = dv[i];
        }
    }
}

// A decoding step's new keys (or values) join the cache: cache (B, Tmax, C) rows past..past+t
// = rows 0..t of the sequence view src (the k or v part of qkv).
extern "C" __global__ void kv_append(float* cache, const float* src, i64 s_off, i64 s_bs, i64 s_rs, int b, int t,
                                     int tmax, i64 past, int c) {
    i64 n = (i64)b * t * c;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        i64 j = e % c, r = (e / c) % t, bi = e / ((i64)c * t);
        cache[(bi * tmax + past + r) * c + j] = src[s_off + bi * s_bs + r * s_rs + j];
    }
}

// out (m, n) += bias (n) on every row.
extern "C" __global__ void add_bias(float* out, const float* bias, i64 m, int n) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < m * n; e += (i64)gridDim.x * blockDim.x)
        out[e] += bias[e % n];
}
