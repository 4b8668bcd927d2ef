//! Resource quantities (`100m`, `1.5`, `128Mi`, `1e3`, `2k`) as numbers of base units (cores,
//! bytes): one parser for validation, the scheduler and the kubelet.

/// Parses a quantity into base units; None when it does not parse.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(text.len());
    let (num, suffix) = text.split_at(split);
    // "1E" is exa, not an exponent: a trailing E/e with no digits after belongs to the suffix.
    let (num, suffix) = match num.strip_suffix(['e', 'E']) {
        Some(n) if suffix.is_empty() => (n, &text[n.len()..]),
        _ => (num, suffix),
    };
    let base: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(base * mult)
}

/// Canonical text of a quantity in base units: millicores for fractional cpu, binary suffixes when they
/// divide evenly, else decimal ones, else a plain integer.
pub fn format(value: f64, cpu: bool) -> String {
    if cpu {
        let milli = (value * 1000.0).round() as i64;
        return if milli % 1000 == 0 {
            (milli / 1000).to_string()
        } else {
            format!("{milli}m")
        };
    }
    let n = value.round() as i64;
    if n == 0 {
        return "0".into();
    }
    for (suffix, unit) in [
        ("Ei", 1i64 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if n % unit == 0 {
            return format!("{}{suffix}", n / unit);
        }
    }
    for (suffix, unit) in [
        ("E", 1_000_000_000_000_000_000i64),
        ("P", 1_000_000_000_000_000),
        ("T", 1_000_000_000_000),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ] {
        if n % unit == 0 {
            return format!("{}{suffix}", n / unit);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quantities_parse_to_base_units() {
        for (text, want) in [
            ("100m", 0.1),
            ("1.5", 1.5),
            ("128Mi", 128.0 * 1024.0 * 1024.0),
            ("1e3", 1000.0),
            ("2k", 2000.0),
            ("1E", 1e18),
            ("1Gi", 1024.0 * 1024.0 * 1024.0),
            (" 3 ", 3.0),
        ] {
            assert_eq!(parse(text), Some(want), "{text}");
        }
        for bad in ["12x", "", "m", "1..2"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
