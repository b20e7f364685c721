//! Numbers as error texts show them: what a client sent, echoed back short.

use std::fmt;

/// A number as a person reads it in an error text: plain (`12.5`,
/// `-3`) in the usual range, in exponent form (`1e300`, `2.5e-9`) beyond
/// it, so a huge or tiny value sent is never echoed as hundreds of digits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compact(pub f64);

impl fmt::Display for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let magnitude = v.abs();
        if v.is_finite() && v != 0.0 && !(1e-5..1e16).contains(&magnitude) {
            write!(f, "{v:e}")
        } else {
            write!(f, "{v}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Compact;

    #[test]
    fn huge_and_tiny_numbers_are_shown_in_exponent_form() {
        let shown = |v: f64| Compact(v).to_string();
        assert_eq!(shown(1e300), "1e300");
        assert_eq!(shown(-1.7976931348623157e308), "-1.7976931348623157e308");
        assert_eq!(shown(2.5e-9), "2.5e-9");
        assert_eq!(shown(18446744073709551616.0), "1.8446744073709552e19");
        for (v, plain) in [
            (12.5, "12.5"),
            (-3.0, "-3"),
            (0.0, "0"),
            (1e9, "1000000000"),
        ] {
            assert_eq!(shown(v), plain);
        }
        assert_eq!(shown(f64::INFINITY), "inf");
    }
}
