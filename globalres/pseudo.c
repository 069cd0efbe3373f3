/* The compressed start of a large system (exact.compressed_start) in C: its Gauss rule (`gauss_bins`), the
 * Newton fit of its pseudo-system (`pseudo_fit`, with `rescale`'s start) and the read-off through y(b)
 * (`ratio_curve`, `hermite_inverse`). At k = 1000 the pseudo-system has ~70 tokens and ~95 nodes, and the
 * numpy version of these steps is ~300 numpy calls on arrays of ~100 entries: 0.5 ms of a 1.1 ms token, most
 * of it call overhead. Here each step is one call.
 *
 * The same formulas as the numpy functions of the same names, in the same order where it matters: the
 * discretised F of `exact.evaluate` (nodes on hZ from `exact.grid`, the left-tail terms of `exact.integrals`,
 * the exponent cap and the FLUSH floor), the exact Hessian of `exact.hessian`, the scaled direct solve of
 * `exact.newton_direction` (I − W Wᵀ by Cholesky) and the line search of `exact.line_search`. All of it only
 * makes a start: the full system is certified afterwards by the numpy evaluation, so an error here can cost
 * time, never exactness, and every function that can fail says so (the caller then runs the numpy code).
 *
 * Built by `make setup`: gcc -O3 -march=native -fopenmp-simd. exp is glibc's vectorised libmvec exp,
 * declared SIMD below without -ffast-math (which would also drop NaN and inf semantics); it is as accurate
 * as numpy's (2 ulp). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#pragma omp declare simd notinbranch
extern double exp(double);

/* exact.py's constants of the same names (tests/test_exact.py checks that they match) */
#define LEFT 1e-4
#define TAIL 1e-18
#define EXP_CAP 345.0
#define FLUSH 1e-150
#define MAX_LOG_STEP 8.0
#define MAX_TOKEN_STEP 2.0

typedef struct {
    long lo, hi, K; /* the nodes t_k = e^{kh}, k = lo..hi; K: room for that many */
    double *t, *dt, *E, *phi, *kernel, *Ek; /* E: G x (hi - lo + 1), row-major */
    double *w, *qw, *acc, *g;
    double m, gnorm, a, b, F;
    int has_F;
    long t_cap, E_cap, w_cap;
} Eval;

typedef struct {
    long G;
    int n;
    const double *q, *target;
    double c, Q, h, r1, r2, rs_log50;
} Sys;

/* exact.exponentials: E = e^{−t w} (G × K, row-major), the exponent capped at −EXP_CAP. The arguments are
 * numpy's to the bit; the values are libmvec's exp, within 4 ulp as numpy's is (measured: 2), which
 * `exact.rounding_terms` allows for. The exp runs as one flat loop over all G·K entries: per row of ~95
 * nodes, the vector loop's remainder would take up to 7 scalar exps a row (2× the time at 1000 × 95). */
void exponentials(long G, long K, const double *w, const double *t, double *E) {
    for (long g = 0; g < G; g++) {
        double wg = w[g], *row = E + g * K;
#pragma omp simd
        for (long k = 0; k < K; k++) {
            double x = wg * -t[k]; /* (fmax is a library call here: it would stop the vectorisation) */
            row[k] = x > -EXP_CAP ? x : -EXP_CAP;
        }
    }
    long size = G * K;
#pragma omp simd
    for (long i = 0; i < size; i++) E[i] = exp(E[i]);
}

/* A buffer of at least `size` doubles, kept for the next call: fresh pages for every call cost page
 * faults (a third of the time, measured). One set per thread, so concurrent calls do not share. */
static double *grow(double **buffer, long *capacity, long size) {
    if (size > *capacity) {
        double *bigger = realloc(*buffer, sizeof(double) * size);
        if (!bigger) return NULL;
        *buffer = bigger;
        *capacity = size;
    }
    return *buffer;
}

/* room for K nodes: t, dt, phi and kernel (K each) and E (G x K) */
static int reserve(Eval *e, long G, long K) {
    if (!grow(&e->t, &e->t_cap, 4 * K) || !grow(&e->E, &e->E_cap, G * K)) return -1;
    e->dt = e->t + K;
    e->phi = e->t + 2 * K;
    e->kernel = e->t + 3 * K;
    return 0;
}

/* acc, g = acc - target and ||g||_1 at log-weights b (exact.evaluate_at) */
static int evaluate(const Sys *s, const double *b, Eval *e) {
    long G = s->G, g, k;
    int n = s->n;
    double wmax = -INFINITY, wmin = INFINITY;
    for (g = 0; g < G; g++) {
        e->w[g] = exp(b[g]);
        if (e->w[g] > wmax) wmax = e->w[g];
        if (e->w[g] < wmin) wmin = e->w[g];
    }
    double h = s->h, kappa = 1.0 + n * wmax;
    long lo = (long)floor(log(LEFT / kappa) / h);
    double t_hi = log(n / TAIL) / fmax(1.0 + wmin, 1e-300);
    long hi = (long)ceil(log(t_hi) / h);
    if (hi < lo + 1) hi = lo + 1;
    long K = hi - lo + 1;
    if (reserve(e, G, K)) return -1;
    e->lo = lo;
    e->hi = hi;
    double *t = e->t, *dt = e->dt, *E = e->E, *phi = e->phi, *kernel = e->kernel;
    for (k = 0; k < K; k++) t[k] = exp(h * (double)(lo + k));
    for (k = 0; k < K; k++) {
        dt[k] = h * t[k] * exp(-t[k]);
        phi[k] = 0.0;
    }
    exponentials(G, K, e->w, t, E);
    for (g = 0; g < G; g++) {
        const double *row = E + g * K;
        double qg = s->q[g];
#pragma omp simd
        for (k = 0; k < K; k++) phi[k] += qg * row[k];
    }
    for (k = 0; k < K; k++) {
        phi[k] += s->c;
        double kk = dt[k] * pow(phi[k], n - 1);
        kernel[k] = kk < FLUSH ? 0.0 : kk;
    }
    double m = 0.0;
    for (g = 0; g < G; g++) {
        e->qw[g] = s->q[g] * e->w[g];
        m += e->qw[g];
    }
    double t0 = t[0], Q = s->Q, scale = h * t0 * n * pow(Q, n - 1);
    e->a = scale * (s->r1 - t0 * s->r2 * (1.0 + (n - 1) * m / Q));
    e->b = scale * t0 * s->r2;
    double gnorm = 0.0;
    for (g = 0; g < G; g++) {
        const double *row = E + g * K;
        double acc = 0.0;
#pragma omp simd reduction(+ : acc)
        for (k = 0; k < K; k++) acc += row[k] * kernel[k];
        e->Ek[g] = acc;
        e->acc[g] = (n * acc + (e->a - e->b * e->w[g])) * e->qw[g];
        e->g[g] = e->acc[g] - s->target[g];
        gnorm += fabs(e->g[g]);
    }
    e->m = m;
    e->gnorm = gnorm;
    e->has_F = 0;
    return isfinite(gnorm) ? 0 : -1;
}

/* F at an evaluation (exact.objective, c0 = 1): only the line search needs it */
static double objective(const Sys *s, const double *b, Eval *e) {
    if (e->has_F) return e->F;
    long K = e->hi - e->lo + 1, k, G = s->G;
    int n = s->n;
    double Q = s->Q, Qn = pow(Q, n), cn = pow(s->c, n), h = s->h, integral = 0.0;
    for (k = 0; k < K; k++) {
        double grow = fmax(e->phi[k] * (1.0 / Q) - 1.0, -1.0 + 0x1p-52);
        integral += exp(-e->t[k]) * expm1(n * log1p(grow));
    }
    double right = 0.0;
    for (k = e->hi + 1; k <= (long)ceil(s->rs_log50 / h); k++) right += exp(-exp(h * (double)k));
    double first = n * pow(Q, n - 1) * e->m, tb = 0.0;
    for (k = 0; k < G; k++) tb += s->target[k] * b[k];
    e->F = h * (-Qn * integral + e->t[0] * s->r1 * first + (Qn - cn) * right) - tb;
    e->has_F = 1;
    return e->F;
}

/* exact.rescale at step H: b + λ with the rejected mass right (Newton on log R, φ_λ(t) = φ_0(t e^λ)), then
 * one Newton step per token on acc(v) = target(v) with that φ frozen. E: room for G × K entries of e^{−s w}. */
static int rescale(const Sys *s, double *b, double H, Eval *e) {
    long G = s->G, g, k;
    int n = s->n;
    double Q = s->Q, c = s->c, wanted = pow(Q, n);
    for (g = 0; g < G; g++) wanted -= s->target[g];
    if (!(wanted > pow(c, n))) return 0; /* tuples of zero-weight tokens are always rejected: R ≥ cⁿ */
    double wmax = -INFINITY, wmin = INFINITY;
    for (g = 0; g < G; g++) {
        e->w[g] = exp(b[g]);
        wmax = e->w[g] > wmax ? e->w[g] : wmax;
        wmin = e->w[g] < wmin ? e->w[g] : wmin;
    }
    long lo = (long)floor(log(LEFT / (n * wmax)) / H);
    long hi = (long)ceil(log(log(n / TAIL) / fmax(wmin, 1e-300)) / H);
    if (hi < lo + 1) hi = lo + 1;
    long K = hi - lo + 1;
    if (reserve(e, G, K)) return -1;
    double *sk = e->t, *phi = e->phi, *power = e->dt, *kernel = e->kernel, *E = e->E;
    for (k = 0; k < K; k++) {
        sk[k] = exp(H * (double)(lo + k));
        phi[k] = c;
    }
    exponentials(G, K, e->w, sk, E);
    for (g = 0; g < G; g++) {
        const double *row = E + g * K;
        double qg = s->q[g];
#pragma omp simd
        for (k = 0; k < K; k++) phi[k] += qg * row[k];
    }
    for (k = 0; k < K; k++) {
        power[k] = pow(phi[k], n - 1);
        phi[k] *= power[k]; /* φⁿ */
    }
    double lam = 0.0, left = H * sk[0] * exp(-H) / -expm1(-H), Qn = pow(Q, n), cn = pow(c, n);
    for (int it = 0; it < 30; it++) {
        double scale = exp(-lam), R = 0.0, slope = 0.0;
        for (k = 0; k < K; k++) {
            double t = sk[k] * scale, a = H * t * exp(-t);
            R += a * phi[k];
            slope += a * (t - 1.0) * phi[k];
        }
        double edge = scale * left * Qn, t_hi = sk[K - 1] * scale;
        R += edge + cn * exp(-t_hi);
        slope += -edge + cn * t_hi * exp(-t_hi);
        double miss = log(wanted / R), step = slope < 0 ? miss * R / slope : 0.0;
        lam += fmin(fmax(step, -20.0), 20.0);
        if (fabs(miss) < 3e-2 || !(slope < 0)) break;
    }
    double scale = exp(-lam), first_tail = scale * left * n * pow(Q, n - 1);
    for (k = 0; k < K; k++) {
        double t = sk[k] * scale;
        kernel[k] = H * t * exp(-t) * power[k];
        phi[k] = t * kernel[k]; /* (φⁿ is done with) */
    }
    double *step = e->acc;
    int finite = 1;
    for (g = 0; g < G; g++) {
        const double *row = E + g * K;
        double S0 = 0.0, S1 = 0.0;
#pragma omp simd reduction(+ : S0, S1)
        for (k = 0; k < K; k++) {
            S0 += row[k] * kernel[k];
            S1 += row[k] * phi[k];
        }
        double wt = e->w[g] * exp(lam), first = n * S0 + first_tail;
        double acc = s->q[g] * wt * first, slope = s->q[g] * wt * (first - n * wt * S1);
        double x = slope > 0 ? (s->target[g] - acc) / slope : 0.0;
        step[g] = fmin(fmax(x, -MAX_TOKEN_STEP), MAX_TOKEN_STEP);
        finite &= isfinite(step[g]);
    }
    for (g = 0; g < G; g++) b[g] += lam + (finite ? step[g] : 0.0);
    return 0;
}

/* the Newton direction at an evaluation: exact.hessian (every node) and exact.newton_direction (direct) */
static int direction(const Sys *s, Eval *e, double *W, double *A, double *work, double *step) {
    long G = s->G, K = e->hi - e->lo + 1, g, j, k, K1 = K + 1;
    int n = s->n;
    double *d = work, *sc = work + G, *root = work + 2 * G, *r = work + 2 * G + K1;
    double dmax = -INFINITY;
    for (g = 0; g < G; g++) {
        const double *row = e->E + g * K;
        double s1 = 0.0;
#pragma omp simd reduction(+ : s1)
        for (k = 0; k < K; k++) s1 += row[k] * e->t[k] * e->kernel[k];
        d[g] = (n * (e->Ek[g] - e->w[g] * s1) + (e->a - 2.0 * e->b * e->w[g])) * e->qw[g];
        if (d[g] > dmax) dmax = d[g];
    }
    for (k = 0; k < K; k++) {
        double Ck = n >= 2 ? n * (n - 1) * e->dt[k] * e->t[k] * pow(e->phi[k], n - 2) : 0.0;
        root[k] = Ck < FLUSH ? 0.0 : sqrt(Ck);
    }
    root[K] = n >= 2 ? sqrt(fmax(e->b * (n - 1) / s->Q, 0.0)) : 0.0;
    double floor_d = fmax(1e-20 * dmax, 1e-300);
    /* W (K + 1) x Gp, transposed and zero-padded to Gp (a multiple of 8), so that the Gram matrix below is
     * a register-blocked product of broadcasts and contiguous loads, with no horizontal sums */
    long Gp = (G + 7) & ~7L;
    for (k = 0; k < K1; k++)
        for (g = G; g < Gp; g++) W[k * Gp + g] = 0.0;
    for (g = 0; g < G; g++) {
        sc[g] = 1.0 / sqrt(fmax(d[g], floor_d));
        double sigma = sc[g] * e->qw[g];
        const double *row = e->E + g * K;
        for (k = 0; k < K; k++) {
            double x = row[k] * sigma;
            W[k * Gp + g] = (x > FLUSH ? x : FLUSH) * root[k];
        }
        W[K * Gp + g] = fmax(sigma, FLUSH) * root[K];
        r[g] = -sc[g] * e->g[g];
    }
    /* A = (1 + 1e-13) I − W Wᵀ, upper triangle (row g holds columns g..G−1), in blocks of 4 rows × 8 columns */
    for (long g0 = 0; g0 < G; g0 += 4) {
        for (long j0 = g0 & ~7L; j0 < Gp; j0 += 8) {
            double acc[4][8] = {{0.0}};
            for (k = 0; k < K1; k++) {
                const double *wk = W + k * Gp;
                for (int i = 0; i < 4; i++) {
                    double x = wk[g0 + i];
#pragma omp simd
                    for (int l = 0; l < 8; l++) acc[i][l] += x * wk[j0 + l];
                }
            }
            for (int i = 0; i < 4 && g0 + i < G; i++)
                for (int l = 0; l < 8 && j0 + l < G; l++) A[(g0 + i) * G + j0 + l] = -acc[i][l];
        }
    }
    for (g = 0; g < G; g++) A[g * G + g] += 1.0 + 1e-13;
    for (j = 0; j < G; j++) { /* Cholesky A = Uᵀ U, right-looking, in place on the upper triangle */
        double *uj = A + j * G;
        if (!(uj[j] > 0.0)) return -1;
        double diag = sqrt(uj[j]), inv = 1.0 / diag;
        uj[j] = diag;
        for (k = j + 1; k < G; k++) uj[k] *= inv;
        for (g = j + 1; g < G; g++) {
            double *ag = A + g * G, x = uj[g];
#pragma omp simd
            for (k = g; k < G; k++) ag[k] -= x * uj[k];
        }
    }
    for (j = 0; j < G; j++) { /* Uᵀ y = r */
        const double *uj = A + j * G;
        double y = r[j] / uj[j];
        r[j] = y;
#pragma omp simd
        for (k = j + 1; k < G; k++) r[k] -= uj[k] * y;
    }
    for (g = G - 1; g >= 0; g--) { /* U x = y */
        const double *ug = A + g * G;
        double acc = r[g];
        for (k = g + 1; k < G; k++) acc -= ug[k] * r[k];
        r[g] = acc / ug[g];
    }
    for (g = 0; g < G; g++) {
        step[g] = sc[g] * r[g];
        if (!isfinite(step[g])) return -1;
    }
    return 0;
}

static int alloc_eval(Eval *e, long G) {
    if (!grow(&e->w, &e->w_cap, 5 * G)) return -1;
    e->qw = e->w + G;
    e->acc = e->w + 2 * G;
    e->g = e->w + 3 * G;
    e->Ek = e->w + 4 * G;
    return 0;
}

/* Damped Newton from b (in/out; first `rescale`d at step 2h when rescale_first) to ||g||_1 <= tol. Returns 0 when converged, nonzero otherwise.
 * out[0..3]: lo, hi, m, ||g||_1 of the last evaluation; kernel_out (capacity `cap`): its kernel;
 * out[4]: Newton iterations. */
int pseudo_fit(long G, int n, const double *q, const double *target, double c, double h, double tol,
               int max_iter, double r1, double r2, int rescale_first, double *b, double *kernel_out, long cap,
               double *out) {
    Sys s = {G, n, q, target, c, 0.0, h, r1, r2, log(50.0)};
    double Q = c;
    for (long g = 0; g < G; g++) Q += q[g];
    s.Q = Q;
    static _Thread_local Eval pair[2];
    static _Thread_local double *vectors, *W, *A, *work;
    static _Thread_local long vectors_cap, W_cap, A_cap, work_cap;
    Eval here = pair[0], there = pair[1];
    int status = -1, iter = 0;
    long g;
    double *trial = grow(&vectors, &vectors_cap, 2 * G), *step = trial + G;
    if (!trial || alloc_eval(&here, G) || alloc_eval(&there, G)) goto done;
    if (rescale_first && rescale(&s, b, 2.0 * h, &there)) goto done;
    for (g = 0; g < G; g++) b[g] = fmin(fmax(b[g], -700.0), 700.0);
    if (evaluate(&s, b, &here)) goto done;
    while (iter < max_iter) {
        if (here.gnorm <= tol) {
            status = 0;
            break;
        }
        long K1 = here.hi - here.lo + 2;
        if (!grow(&W, &W_cap, ((G + 7) & ~7L) * K1) || !grow(&work, &work_cap, 3 * G + K1) || !grow(&A, &A_cap, G * G))
            goto done;
        if (direction(&s, &here, W, A, work, step)) goto done;
        iter++;
        double biggest = 0.0, slope = 0.0, size = 1.0;
        for (g = 0; g < G; g++) biggest = fmax(biggest, fabs(step[g]));
        double shrink = biggest > MAX_LOG_STEP ? MAX_LOG_STEP / biggest : 1.0;
        for (g = 0; g < G; g++) {
            step[g] *= shrink;
            slope += here.g[g] * step[g];
        }
        int accepted = 0;
        for (int tries = 0; tries < 40 && !accepted; tries++, size /= 2) {
            for (g = 0; g < G; g++) trial[g] = fmin(fmax(b[g] + size * step[g], -700.0), 700.0);
            if (evaluate(&s, trial, &there)) continue;
            if (there.gnorm < here.gnorm ||
                objective(&s, trial, &there) <= objective(&s, b, &here) + 1e-4 * size * slope)
                accepted = 1;
        }
        if (!accepted) goto done;
        memcpy(b, trial, sizeof(double) * G);
        Eval swap = here;
        here = there;
        there = swap;
    }
    if (here.gnorm <= tol) status = 0;
done:
    if (here.w && here.t) {
        long K = here.hi - here.lo + 1;
        out[0] = (double)here.lo;
        out[1] = (double)here.hi;
        out[2] = here.m;
        out[3] = here.gnorm;
        out[4] = (double)iter;
        if (K <= cap) memcpy(kernel_out, here.kernel, sizeof(double) * K);
        else status = status ? status : -2;
    }
    pair[0] = here; /* the buffers stay for the next call (in whichever order the swaps left them) */
    pair[1] = there;
    return status;
}

/* exact.gauss_bins for y sorted increasing: the 3-point Gauss rule of Σ_v q_v δ(y_v) within each bin of
 * `width` (ties merged into one point; a bin of at most 3 points, or whose measure is degenerate, keeps its
 * points), the same formulas in the same order as the numpy version. Writes nodes Y and weights W (room
 * for G each) in increasing Y, zero weights left out; returns their count, or −1 where y is not sorted. */
long gauss_bins(long G, const double *y, const double *q, double width, double *Y, double *W) {
    long i, out = 0;
    for (i = 1; i < G; i++)
        if (y[i] < y[i - 1]) return -1;
    long start = 0;
    while (start < G) {
        double cell = floor(y[start] / width);
        long end = start + 1, points = 1;
        while (end < G && floor(y[end] / width) == cell) {
            points += y[end] != y[end - 1];
            end++;
        }
        double mass = 0.0, centre = 0.0;
        for (i = start; i < end; i++) {
            mass += q[i];
            centre += q[i] * y[i];
        }
        centre /= mass;
        double spread = 0.0;
        for (i = start; i < end; i++) spread += q[i] * (y[i] - centre) * (y[i] - centre);
        spread = sqrt(spread / mass);
        int rule = 0;
        double x[3], weight[3];
        if (points > 3 && spread > 0) {
            double s3 = 0.0, s4 = 0.0, s5 = 0.0, s6 = 0.0;
            for (i = start; i < end; i++) {
                double z = (y[i] - centre) / spread, z3 = q[i] * z * (z * z);
                s3 += z3;
                s4 += z3 * z;
                s5 += z3 * z * z;
                s6 += z3 * z * z * z;
            }
            s3 /= mass, s4 /= mass, s5 /= mass, s6 /= mass;
            double norm2 = s4 - s3 * s3 - 1.0;
            double alpha2 = (s5 - 2.0 * s3 * s4 + s3 * s3 * s3) / norm2;
            double norm3 = s6 - 2.0 * s3 * s5 + (s3 * s3 - 2.0) * s4 + 2.0 * s3 * s3 + 1.0 - alpha2 * alpha2 * norm2
                           - norm2 * norm2;
            if (norm2 > 1e-9 && norm3 > 1e-9 * norm2) { /* p3 = (z − α2) p2 − β2 z = z³ + a z² + b z + c */
                double a = -(s3 + alpha2), b = alpha2 * s3 - 1.0 - norm2, c = alpha2, third = a / 3.0;
                double p = b - a * third, r = (2.0 / 27.0) * a * a * a - b * third + c;
                double angle = acos(fmin(fmax(1.5 * r / p * sqrt(-3.0 / p), -1.0), 1.0)) / 3.0;
                for (int j = 0; j < 3; j++) { /* j = 2, 1, 0: increasing */
                    double u = 2.0 * sqrt(-p / 3.0) * cos(angle - (2.0 * M_PI / 3.0) * (2 - j)) - third;
                    u -= (((u + a) * u + b) * u + c) / ((3.0 * u + 2.0 * a) * u + b);
                    double p2 = (u - s3) * u - 1.0;
                    weight[j] = mass / (1.0 + u * u + p2 * p2 / norm2);
                    x[j] = centre + spread * u;
                }
                rule = 1;
            }
        }
        if (rule) {
            for (int j = 0; j < 3; j++)
                if (weight[j] > 0) {
                    Y[out] = x[j];
                    W[out++] = weight[j];
                }
        } else { /* the bin's points, ties merged */
            for (i = start; i < end; i++) {
                if (i > start && y[i] == y[i - 1]) {
                    W[out - 1] += q[i];
                    continue;
                }
                Y[out] = y[i];
                W[out++] = q[i];
            }
        }
        start = end;
    }
    long kept = 0;
    for (i = 0; i < out; i++)
        if (W[i] > 0) {
            Y[kept] = Y[i];
            W[kept++] = W[i];
        }
    return kept;
}

/* exact.ratio_curve: y(b) = logit((R(e^b) − R0)/(R∞ − R0)) and its first two derivatives in b at the NG
 * points bg, from a fit's nodes t, kernel (K each) and m = Σ q w; c0 = 1 (inner) or 0 (segment). */
void ratio_curve(long K, const double *t, const double *kernel, double m, int n, int c0, double Q, double h,
                 double r1, double r2, double bottom, double top, long NG, const double *bg, double *y,
                 double *y_b, double *y_bb) {
    static _Thread_local double *E, *w;
    static _Thread_local long E_cap, w_cap;
    if (!grow(&E, &E_cap, NG * K) || !grow(&w, &w_cap, NG)) { /* no memory: y NaN, which the caller refuses */
        for (long i = 0; i < NG; i++) y[i] = y_b[i] = y_bb[i] = NAN;
        return;
    }
    for (long i = 0; i < NG; i++) w[i] = exp(bg[i]);
    exponentials(NG, K, w, t, E);
    double t0 = t[0], Qn1 = pow(Q, n - 1), dL = -h * t0 * t0 * Qn1 * r2;
    for (long i = 0; i < NG; i++) {
        const double *row = E + i * K;
        double S0 = 0.0, S1 = 0.0, S2 = 0.0;
#pragma omp simd reduction(+ : S0, S1, S2)
        for (long k = 0; k < K; k++) {
            double e = row[k] * kernel[k];
            S0 += e;
            S1 += e * t[k];
            S2 += e * t[k] * t[k];
        }
        double w_i = w[i];
        double L = h * t0 * Qn1 * (r1 - t0 * r2 * (c0 + w_i + (n - 1) * m / Q));
        double R = n * w_i * (S0 + L), R_w = n * (S0 - w_i * S1 + L + w_i * dL);
        double R_ww = n * (w_i * S2 - 2 * S1 + 2 * dL);
        double R_b = w_i * R_w, R_bb = w_i * R_w + w_i * w_i * R_ww, below = R - bottom, gap = top - R;
        double scale = (top - bottom) / (below * gap);
        y[i] = log(below) - log(gap);
        y_b[i] = R_b * scale;
        y_bb[i] = R_bb * scale + R_b * R_b * (2 * R - bottom - top) * scale * scale / (top - bottom);
    }
}

/* exact.hermite_inverse for y sorted increasing: B(y) by the quintic Hermite interpolant of the inverse of
 * b -> y on the grid (bg, yg) with B' = 1/y_b and B'' = −y_bb/y_b³ (the end intervals extrapolate).
 * Returns 0, or −1 where y is not sorted. */
int hermite_inverse(long NG, const double *yg, const double *bg, const double *y_b, const double *y_bb, long G,
                    const double *y, double *out) {
    for (long i = 1; i < G; i++)
        if (y[i] < y[i - 1]) return -1;
    long i = 0;
    for (long j = 0; j + 1 < NG; j++) {
        double d = yg[j + 1] - yg[j];
        double D = d / y_b[j], S = -d * d * y_bb[j] / (y_b[j] * y_b[j] * y_b[j]);
        double D1 = d / y_b[j + 1], S1 = -d * d * y_bb[j + 1] / (y_b[j + 1] * y_b[j + 1] * y_b[j + 1]);
        double f0 = bg[j], jump = bg[j + 1] - bg[j];
        double c[6] = {f0, D, S / 2, 10 * jump - 6 * D - 4 * D1 - 1.5 * S + 0.5 * S1,
                       -15 * jump + 8 * D + 7 * D1 + 1.5 * S - S1, 6 * jump - 3 * D - 3 * D1 - 0.5 * S + 0.5 * S1};
        double inv = 1.0 / d;
        /* tokens of this interval: y <= yg[j + 1] (the last interval takes the rest) */
        for (; i < G && (j + 2 == NG || y[i] <= yg[j + 1]); i++) {
            double s = (y[i] - yg[j]) * inv;
            out[i] = ((((c[5] * s + c[4]) * s + c[3]) * s + c[2]) * s + c[1]) * s + c[0];
        }
    }
    return 0;
}

