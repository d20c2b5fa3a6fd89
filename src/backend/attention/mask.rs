//! Which keys a query sees: one description the forward, backward and decoding kernels all
//! read, so no call site hand-codes a mask (`../shared/design/architectures.md`).
//!
//! Positions are slots 0..T of one sequence; a 2D mask knows the image width W and reads the
//! slot's coordinates r = p div W, c = p mod W.

/// Which side of a (query, key) pair [`Mask::tiles`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The keys some query of a group sees.
    Keys,
    /// The queries that see some key of a group.
    Queries,
}

/// The visibility rule of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// GPT: query p sees keys s <= p.
    Causal,
    /// BERT: every query sees every key.
    Full,
    /// `local_2d`: key s is visible to query p when |c_p - c_s| <= cols and, causal,
    /// s <= p and r_p - r_s <= rows; not causal, |r_p - r_s| <= rows.
    Local2d { rows: usize, cols: usize, width: usize, causal: bool },
}

impl Mask {
    /// Whether no query sees a later key.
    pub fn is_causal(self) -> bool {
        match self {
            Mask::Causal => true,
            Mask::Full => false,
            Mask::Local2d { causal, .. } => causal,
        }
    }

    /// Whether key s is visible to query p.
    #[inline]
    pub fn visible(self, p: usize, s: usize) -> bool {
        match self {
            Mask::Causal => s <= p,
            Mask::Full => true,
            Mask::Local2d { rows, cols, width, causal } => {
                let (rp, cp, rs, cs) = (p / width, p % width, s / width, s % width);
                cp.abs_diff(cs) <= cols && if causal { s <= p && rp - rs <= rows } else { rp.abs_diff(rs) <= rows }
            }
        }
    }

    /// The keys below `hi` that query p may see lie in `key_span(p, hi).0..key_span(p, hi).1`
    /// (a superset: every visible key is inside).
    #[inline]
    pub fn key_span(self, p: usize, hi: usize) -> (usize, usize) {
        match self {
            Mask::Causal => (0, (p + 1).min(hi)),
            Mask::Full => (0, hi),
            Mask::Local2d { rows, width, causal, .. } => {
                let r = p / width;
                let lo = r.saturating_sub(rows) * width;
                let end = if causal { p + 1 } else { (r + rows + 1) * width };
                (lo.min(hi), end.min(hi))
            }
        }
    }

    /// Calls `f(a, b)` for every maximal run a..b of keys in lo..hi visible to query p, in
    /// increasing order.
    #[inline]
    pub fn runs(self, p: usize, lo: usize, hi: usize, f: impl FnMut(usize, usize)) {
        let (span_lo, span_hi) = self.key_span(p, hi);
        self.window_runs(p, lo.max(span_lo), hi.min(span_hi), f);
    }

    /// The queries below `t` that may see key s: a superset range, as [`Mask::key_span`].
    #[inline]
    pub fn query_span(self, s: usize, t: usize) -> (usize, usize) {
        match self {
            Mask::Causal => (s.min(t), t),
            Mask::Full => (0, t),
            Mask::Local2d { rows, width, causal, .. } => {
                let r = s / width;
                let lo = if causal { s } else { r.saturating_sub(rows) * width };
                (lo.min(t), ((r + rows + 1) * width).min(t))
            }
        }
    }

    /// Calls `f(a, b)` for every maximal run a..b of queries in lo..hi that see key s, in
    /// increasing order (the rule is symmetric in columns; rows bounded by the span).
    #[inline]
    pub fn query_runs(self, s: usize, lo: usize, hi: usize, f: impl FnMut(usize, usize)) {
        let (span_lo, span_hi) = self.query_span(s, hi);
        self.window_runs(s, lo.max(span_lo), hi.min(span_hi), f);
    }

    /// The columns within `cols` of slot x's column, in every image row of lo..hi (all of
    /// lo..hi for the dense masks).
    #[inline]
    fn window_runs(self, x: usize, lo: usize, hi: usize, mut f: impl FnMut(usize, usize)) {
        if lo >= hi {
            return;
        }
        let Mask::Local2d { cols, width, .. } = self else { return f(lo, hi) };
        let cx = x % width;
        let (c_lo, c_hi) = (cx.saturating_sub(cols), (cx + cols + 1).min(width));
        let mut row = lo / width;
        while row * width < hi {
            let (a, b) = ((row * width + c_lo).max(lo), (row * width + c_hi).min(hi));
            if a < b {
                f(a, b);
            }
            row += 1;
        }
    }

    /// The 16-aligned span c0..c1 of a block lo..lo+len (len <= 64) holding every slot that
    /// some slot of x0..x0+n sees (Keys: x are queries; Queries: x are keys), or None. Local
    /// kernels compute only these tiles of a block.
    #[inline]
    pub fn tiles(self, side: Side, x0: usize, n: usize, lo: usize, len: usize) -> Option<(usize, usize)> {
        let (mut a, mut b) = (usize::MAX, 0);
        for x in x0..x0 + n {
            let mut f = |s: usize, e: usize| (a, b) = (a.min(s), b.max(e));
            match side {
                Side::Keys => self.runs(x, lo, lo + len, &mut f),
                Side::Queries => self.query_runs(x, lo, lo + len, &mut f),
            }
        }
        (a < b).then(|| ((a - lo) / 16 * 16, (b - lo).next_multiple_of(16).min(64)))
    }

    /// Whether some query of q_lo..q_hi may see some key of k_lo..k_hi (false: the whole
    /// block pair can be skipped).
    pub fn block_visible(self, q_lo: usize, q_hi: usize, k_lo: usize, k_hi: usize) -> bool {
        if q_lo >= q_hi || k_lo >= k_hi {
            return false;
        }
        match self {
            Mask::Causal => k_lo < q_hi,
            Mask::Full => true,
            Mask::Local2d { rows, cols, width, causal } => {
                let (rq_lo, rq_hi) = (q_lo / width, (q_hi - 1) / width);
                let (rk_lo, rk_hi) = (k_lo / width, (k_hi - 1) / width);
                let rows_meet = if causal {
                    k_lo < q_hi && rk_lo <= rq_hi && rq_lo <= rk_hi + rows
                } else {
                    rk_lo <= rq_hi + rows && rq_lo <= rk_hi + rows
                };
                // columns: only when both blocks lie within one image row each
                let cols_meet = rq_lo != rq_hi
                    || rk_lo != rk_hi
                    || (q_lo % width) <= (k_hi - 1) % width + cols && (k_lo % width) <= (q_hi - 1) % width + cols;
                rows_meet && cols_meet
            }
        }
    }

    /// How many of the last keys a causal decoding step can see at most (None: all of them).
    pub fn window(self) -> Option<usize> {
        match self {
            Mask::Local2d { rows, width, causal: true, .. } => Some((rows + 1) * width),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // slot indices are the point here
mod tests {
    use super::*;

    /// Runs, spans and block visibility agree with the pairwise rule, for GPT and BERT local
    /// masks (rows and cols swapped included) and the dense ones.
    #[test]
    fn runs_and_blocks_agree_with_the_pairwise_rule() {
        let (w, t) = (8, 64);
        let masks = [
            Mask::Causal,
            Mask::Full,
            Mask::Local2d { rows: 2, cols: 1, width: w, causal: true },
            Mask::Local2d { rows: 1, cols: 2, width: w, causal: false },
            Mask::Local2d { rows: 0, cols: 0, width: w, causal: true },
            Mask::Local2d { rows: 7, cols: 7, width: w, causal: true },
        ];
        for m in masks {
            for p in 0..t {
                let mut got = vec![false; t];
                let mut last = 0;
                m.runs(p, 3, t - 2, |a, b| {
                    assert!(a >= last && a < b, "{m:?} p={p}: runs out of order");
                    last = b;
                    got[a..b].iter_mut().for_each(|x| *x = true);
                });
                for s in 0..t {
                    let want = (3..t - 2).contains(&s) && m.visible(p, s);
                    assert_eq!(got[s], want, "{m:?} p={p} s={s}");
                }
                assert!(m.visible(p, p), "a slot sees itself");
            }
            for s in 0..t {
                let mut got = vec![false; t];
                m.query_runs(s, 5, t - 1, |a, b| got[a..b].iter_mut().for_each(|x| *x = true));
                for p in 0..t {
                    assert_eq!(got[p], (5..t - 1).contains(&p) && m.visible(p, s), "{m:?} queries of s={s}: p={p}");
                }
            }
            for (q_lo, k_lo) in [(0, 0), (16, 0), (24, 8), (40, 0), (8, 48), (56, 56)] {
                let any = (q_lo..q_lo + 8).any(|p| (k_lo..k_lo + 8).any(|s| m.visible(p, s)));
                if any {
                    assert!(m.block_visible(q_lo, q_lo + 8, k_lo, k_lo + 8), "{m:?} {q_lo} {k_lo}");
                }
            }
        }
        // full-image windows are dense
        let big = Mask::Local2d { rows: 7, cols: 7, width: w, causal: true };
        assert!((0..t).all(|p| (0..t).all(|s| big.visible(p, s) == Mask::Causal.visible(p, s))));
        // a far block is skipped
        let local = Mask::Local2d { rows: 1, cols: 1, width: w, causal: true };
        assert!(!local.block_visible(48, 56, 0, 8));
        assert_eq!(local.window(), Some(16));
    }
}
