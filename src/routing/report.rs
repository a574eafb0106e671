//! Statistics for A/B rollout reports and for tests of traffic splitting: a two-proportion z-test
//! of error rates, a chi-square goodness-of-fit test, and the normal / chi-square distribution
//! functions they need. Pure std; relative error ~1e-13 or better, also in the far tails.

use std::f64::consts::PI;

/// Relative tolerance of the incomplete gamma series and continued fraction.
const EPS: f64 = f64::EPSILON;
/// Guard against division by zero in the modified Lentz algorithm.
const TINY: f64 = 1e-300;
/// Iteration cap; both expansions converge in O(sqrt(a)) steps, so this covers any `u32` df
/// that matters (it is reached only for a ~ 1e8 and above).
const MAX_ITER: u32 = 100_000;

/// Result of comparing the error (failure) rate of two arms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProportionTest {
    /// Failure rate of arm A, `failures_a / total_a`.
    pub rate_a: f64,
    /// Failure rate of arm B, `failures_b / total_b`.
    pub rate_b: f64,
    /// `rate_b - rate_a`: positive when B fails more often.
    pub difference: f64,
    /// `difference / pooled_se`; same sign as `difference`.
    pub z: f64,
    /// Two-sided p-value of `z` under "both arms have the same rate".
    pub p_value: f64,
    /// Lower end of the Wald confidence interval of `difference`.
    pub ci_low: f64,
    /// Upper end of the Wald confidence interval of `difference`.
    pub ci_high: f64,
    /// Confidence level of the interval, e.g. 0.95.
    pub confidence: f64,
}

/// Two-proportion z-test of `failures_b / total_b` against `failures_a / total_a`.
///
/// With `pa = fa/na`, `pb = fb/nb`, `d = pb - pa` and the pooled rate `p = (fa + fb)/(na + nb)`:
/// - `z = d / sqrt(p (1 - p) (1/na + 1/nb))` (sign convention: positive when B is worse), and
///   `p_value = 2 (1 - Phi(|z|))`; when the pooled SE is 0 (both rates 0 or both 1),
///   `z = 0` and `p_value = 1`.
/// - CI: `d ± z_c * sqrt(pa (1 - pa)/na + pb (1 - pb)/nb)` with `z_c = Phi^-1((1 + confidence)/2)`
///   (unpooled Wald SE; it degenerates to a point when both rates are 0 or 1).
///
/// `None` when either total is 0, failures exceed their total, or `confidence` is not in (0, 1).
pub fn two_proportion_test(
    failures_a: u64,
    total_a: u64,
    failures_b: u64,
    total_b: u64,
    confidence: f64,
) -> Option<ProportionTest> {
    if total_a == 0
        || total_b == 0
        || failures_a > total_a
        || failures_b > total_b
        || !(confidence > 0.0 && confidence < 1.0)
    {
        return None;
    }
    let (na, nb) = (total_a as f64, total_b as f64);
    let (rate_a, rate_b) = (failures_a as f64 / na, failures_b as f64 / nb);
    let difference = rate_b - rate_a;
    let pooled = (failures_a as f64 + failures_b as f64) / (na + nb);
    let pooled_se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    let (z, p_value) = if pooled_se > 0.0 {
        let z = difference / pooled_se;
        (z, (2.0 * normal_cdf(-z.abs())).min(1.0))
    } else {
        (0.0, 1.0)
    };
    let wald_se = (rate_a * (1.0 - rate_a) / na + rate_b * (1.0 - rate_b) / nb).sqrt();
    let half_width = normal_quantile(0.5 + confidence / 2.0) * wald_se;
    Some(ProportionTest {
        rate_a,
        rate_b,
        difference,
        z,
        p_value,
        ci_low: difference - half_width,
        ci_high: difference + half_width,
        confidence,
    })
}

/// Standard normal CDF `Phi(x) = erfc(-x / sqrt(2)) / 2`, with `erfc(t) = Q(1/2, t^2)` computed
/// by the incomplete gamma function below: relative error ~1e-15 near the centre, growing like
/// `x^2 * 2^-52` in the lower tail (1.4e-13 at x = -37, where Phi ~ 1e-294); the p-values live
/// there, which is why this is not the ~1e-7 classic rational approximation.
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let q = regularized_gamma_q(0.5, x * x / 2.0);
    if x >= 0.0 { 1.0 - q / 2.0 } else { q / 2.0 }
}

/// Inverse of [`normal_cdf`] (the z for a confidence level): P. J. Acklam's rational
/// approximation (relative error < 1.15e-9) refined by one Halley step against `normal_cdf`,
/// which brings it to ~1e-15. `-inf` for `p <= 0`, `+inf` for `p >= 1`, NaN for NaN.
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() {
        f64::NAN
    } else if p <= 0.0 {
        f64::NEG_INFINITY
    } else if p >= 1.0 {
        f64::INFINITY
    } else {
        // Work in the lower tail (1 - p is exact for p > 0.5) to keep full relative accuracy.
        let lower = p.min(1.0 - p);
        let x = acklam_lower(lower);
        // One Halley step on normal_cdf(x) = lower.
        let u = (normal_cdf(x) - lower) * (2.0 * PI).sqrt() * (x * x / 2.0).exp();
        let x = x - u / (1.0 + x * u / 2.0);
        if p > 0.5 { -x } else { x }
    }
}

/// Acklam's approximation of the normal quantile for `p` in (0, 0.5].
fn acklam_lower(p: f64) -> f64 {
    #[rustfmt::skip]
    const A: [f64; 6] = [
        -3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2,
        1.38357751867269e2, -3.066479806614716e1, 2.506628277459239,
    ];
    #[rustfmt::skip]
    const B: [f64; 5] = [
        -5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2,
        6.680131188771972e1, -1.328068155288572e1,
    ];
    #[rustfmt::skip]
    const C: [f64; 6] = [
        -7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838,
        -2.549732539343734, 4.374664141464968, 2.938163982698783,
    ];
    #[rustfmt::skip]
    const D: [f64; 4] = [
        7.784695709041462e-3, 3.224671290700398e-1,
        2.445134137142996, 3.754408661907416,
    ];
    let horner = |coefficients: &[f64], x: f64| coefficients.iter().fold(0.0, |acc, c| acc * x + c);
    if p < 0.02425 {
        let q = (-2.0 * p.ln()).sqrt();
        horner(&C, q) / (horner(&D, q) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        horner(&A, r) * q / (horner(&B, r) * r + 1.0)
    }
}

/// `P(X >= statistic)` for `X ~ chi-square(degrees_of_freedom)`: the regularized upper
/// incomplete gamma function `Q(k/2, statistic/2)`. 1 for `statistic <= 0`; for 0 degrees of
/// freedom (a point mass at 0), 0 for any positive statistic.
pub fn chi_square_survival(statistic: f64, degrees_of_freedom: u32) -> f64 {
    if statistic.is_nan() {
        f64::NAN
    } else if statistic <= 0.0 {
        1.0
    } else if degrees_of_freedom == 0 {
        0.0
    } else {
        regularized_gamma_q(f64::from(degrees_of_freedom) / 2.0, statistic / 2.0)
    }
}

/// Pearson's chi-square goodness-of-fit test of `observed` counts against `expected_shares`
/// (any non-negative weights; normalised to sum 1): `expected_i = share_i / sum(shares) * n`,
/// `statistic = sum (observed_i - expected_i)^2 / expected_i`, `df = len - 1`. Returns
/// `(statistic, p_value)`. A category with expected share 0 contributes 0 if nothing was observed
/// there and makes the statistic infinite (p = 0) otherwise. Nothing to test (fewer than two
/// categories, or no observations) gives `(0, 1)`; mismatched lengths or negative, non-finite or
/// all-zero shares give `(NaN, NaN)`.
pub fn chi_square_goodness_of_fit(observed: &[u64], expected_shares: &[f64]) -> (f64, f64) {
    if observed.len() != expected_shares.len()
        || expected_shares.iter().any(|s| !s.is_finite() || *s < 0.0)
    {
        return (f64::NAN, f64::NAN);
    }
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    if observed.len() < 2 || total == 0.0 {
        return (0.0, 1.0);
    }
    let share_total: f64 = expected_shares.iter().sum();
    if share_total <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let statistic: f64 = observed
        .iter()
        .zip(expected_shares)
        .map(|(&o, &share)| {
            let expected = share / share_total * total;
            let diff = o as f64 - expected;
            match (expected > 0.0, o) {
                (true, _) => diff * diff / expected,
                (false, 0) => 0.0,
                (false, _) => f64::INFINITY,
            }
        })
        .sum();
    let df = u32::try_from(observed.len() - 1).unwrap_or(u32::MAX);
    (statistic, chi_square_survival(statistic, df))
}

/// `ln Gamma(a)` for `a > 0`: shifted up to `a >= 15`, then the Stirling series to `x^-9`
/// (truncation error < 1e-16 there).
fn ln_gamma(a: f64) -> f64 {
    let (mut x, mut product) = (a, 1.0);
    while x < 15.0 {
        product *= x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = inv
        * (1.0 / 12.0
            - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 * (1.0 / 1680.0 - inv2 / 1188.0))));
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * PI).ln() + series - product.ln()
}

/// Regularized upper incomplete gamma `Q(a, x) = Gamma(a, x) / Gamma(a)` for `a > 0`, Numerical
/// Recipes style: the series for `P = 1 - Q` when `x < a + 1`, else the continued fraction for
/// `Q` (modified Lentz).
fn regularized_gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let prefactor = (a * x.ln() - x - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut n, mut term) = (a, 1.0 / a);
        let mut sum = term;
        for _ in 0..MAX_ITER {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * EPS {
                break;
            }
        }
        (1.0 - sum * prefactor).max(0.0)
    } else {
        let mut b = x + 1.0 - a;
        let (mut c, mut d) = (1.0 / TINY, 1.0 / b);
        let mut h = d;
        for i in 1..MAX_ITER {
            let i = f64::from(i);
            let an = -i * (i - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < TINY { TINY } else { d };
            c = b + an / c;
            c = if c.abs() < TINY { TINY } else { c };
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < EPS {
                break;
            }
        }
        (prefactor * h).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::SQRT_2;

    fn erfc(x: f64) -> f64 {
        2.0 * normal_cdf(-x * SQRT_2)
    }

    #[track_caller]
    fn assert_close(actual: f64, expected: f64, rel: f64) {
        let ok = (actual - expected).abs() <= rel * expected.abs().max(f64::MIN_POSITIVE);
        assert!(ok, "{actual} is not within {rel} of {expected}");
    }

    #[test]
    fn normal_cdf_reference_values() {
        assert_eq!(normal_cdf(0.0), 0.5);
        assert_close(ln_gamma(0.5), 0.5 * PI.ln(), 1e-14);
        assert_close(ln_gamma(100.5), 361.435_540_467_777_6, 1e-14);
        assert_close(normal_cdf(1.96), 0.975_002_104_851_779_5, 1e-13);
        assert_close(normal_cdf(-3.0), 0.001_349_898_031_630_095, 1e-12);
        assert_close(normal_cdf(-8.0), 6.220_960_574_271_819e-16, 1e-10);
        assert_close(erfc(1.0), 0.157_299_207_050_285_13, 1e-13);
        assert_close(erfc(0.5), 0.479_500_122_186_953_5, 1e-13);
        assert_eq!(normal_cdf(f64::INFINITY), 1.0);
        assert_eq!(normal_cdf(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn normal_quantile_inverts_the_cdf() {
        assert_close(normal_quantile(0.975), 1.959_963_984_540_054, 1e-12);
        assert_close(normal_quantile(0.025), -1.959_963_984_540_054, 1e-12);
        assert_eq!(normal_quantile(0.5), 0.0);
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        for p in [
            1e-12, 1e-6, 0.001, 0.02, 0.0243, 0.1, 0.3, 0.7, 0.9, 0.99, 0.999_9,
        ] {
            let x = normal_quantile(p);
            assert_close(normal_cdf(x), p, 1e-12);
            // The unrefined approximation is already close (checks the coefficients).
            assert_close(acklam_lower(p.min(1.0 - p)).abs(), x.abs(), 1.2e-9);
        }
    }

    #[test]
    fn chi_square_survival_reference_values() {
        // Statistic, df, P(X >= statistic) from closed forms (erfc and exp series for odd/even df).
        let table = [
            (3.841_459, 1, 0.049_999_994_653_195_76),
            (5.991_465, 2, 0.049_999_988_677_700_835),
            (7.814_728, 3, 0.049_999_997_831_966_15),
            (9.487_729, 4, 0.050_000_000_759_440_034),
            (11.070_498, 5, 0.049_999_994_077_313),
            (124.342, 100, 0.050_000_715_769_971_775),
            (0.5, 3, 0.918_891_411_654_676),
            (30.0, 10, 0.000_856_641_210_775_300_4),
        ];
        for (statistic, df, expected) in table {
            assert_close(chi_square_survival(statistic, df), expected, 1e-12);
        }
        for k in [1, 2, 7, 1000] {
            assert_eq!(chi_square_survival(0.0, k), 1.0);
            assert_eq!(chi_square_survival(f64::INFINITY, k), 0.0);
        }
        assert_eq!(chi_square_survival(1.0, 0), 0.0);
        assert!(chi_square_survival(f64::NAN, 3).is_nan());
    }

    #[test]
    fn two_proportion_example() {
        // pooled p = 0.02, se = sqrt(0.02 * 0.98 * 2/1000) = 0.006260990, z = 0.02 / se.
        let t = two_proportion_test(10, 1000, 30, 1000, 0.95).unwrap();
        assert_close(t.rate_a, 0.01, 1e-15);
        assert_close(t.rate_b, 0.03, 1e-15);
        assert_close(t.difference, 0.02, 1e-12);
        assert_close(t.z, 3.194_382_824_999_699_7, 1e-12);
        assert_close(t.p_value, 0.001_401_301_580_960_213_7, 1e-9);
        // Wald se = sqrt(0.01 * 0.99/1000 + 0.03 * 0.97/1000) = 0.006244998.
        assert_close(t.ci_low, 0.007_760_028_839_614_413, 1e-9);
        assert_close(t.ci_high, 0.032_239_971_160_385_586, 1e-9);
        // Swapping the arms flips the sign only.
        let s = two_proportion_test(30, 1000, 10, 1000, 0.95).unwrap();
        assert_close(s.z, -t.z, 1e-15);
        assert_close(s.p_value, t.p_value, 1e-15);
    }

    #[test]
    fn identical_and_degenerate_rates() {
        let t = two_proportion_test(50, 1000, 100, 2000, 0.99).unwrap();
        assert_eq!((t.difference, t.z, t.p_value), (0.0, 0.0, 1.0));
        assert!(t.ci_low < 0.0 && t.ci_high > 0.0);
        let zero = two_proportion_test(0, 10, 0, 20, 0.95).unwrap();
        assert_eq!(
            (zero.z, zero.p_value, zero.ci_low, zero.ci_high),
            (0.0, 1.0, 0.0, 0.0)
        );
        let all = two_proportion_test(10, 10, 20, 20, 0.95).unwrap();
        assert_eq!((all.z, all.p_value), (0.0, 1.0));
        assert_eq!(two_proportion_test(0, 0, 1, 10, 0.95), None);
        assert_eq!(two_proportion_test(1, 10, 0, 0, 0.95), None);
        assert_eq!(two_proportion_test(11, 10, 0, 10, 0.95), None);
        assert_eq!(two_proportion_test(1, 10, 1, 10, 1.0), None);
    }

    #[test]
    fn goodness_of_fit() {
        let (statistic, p) = chi_square_goodness_of_fit(&[9000, 1000], &[0.9, 0.1]);
        assert!(statistic.abs() < 1e-12, "{statistic}");
        assert_close(p, 1.0, 1e-9);
        // Expected 15/15: statistic = 2 * 25/15, df = 1.
        let (statistic, p) = chi_square_goodness_of_fit(&[10, 20], &[1.0, 1.0]);
        assert_close(statistic, 10.0 / 3.0, 1e-14);
        assert_close(p, 0.067_889_154_861_829_03, 1e-9);
        assert_eq!(chi_square_goodness_of_fit(&[5, 1], &[1.0, 0.0]).1, 0.0);
        assert_eq!(chi_square_goodness_of_fit(&[5, 0], &[1.0, 0.0]), (0.0, 1.0));
        assert_eq!(chi_square_goodness_of_fit(&[0, 0], &[0.5, 0.5]), (0.0, 1.0));
        assert!(chi_square_goodness_of_fit(&[1, 2], &[1.0]).0.is_nan());
        assert!(chi_square_goodness_of_fit(&[1, 2], &[1.0, -1.0]).1.is_nan());
    }
}
