//! Reading the values of a traffic file: each section and scalar with its checks, the messages
//! naming the key path with what was expected and what was found, and durations.

use super::*;

pub(super) fn rollout_plan(y: &Yaml) -> Result<RolloutPlan, String> {
    let e = entries("rollout", y, ROLLOUT_KEYS)?;
    let mut plan = RolloutPlan::default();
    if let Some(y) = e.get("steps") {
        let Yaml::Array(items) = y else {
            return expected("rollout.steps", "a list of percentages", y);
        };
        if items.is_empty() {
            return Err("rollout.steps: expected at least one step, got an empty list".into());
        }
        plan.steps.clear();
        for (i, item) in items.iter().enumerate() {
            let path = format!("rollout.steps[{i}]:");
            let step = number(&path, item, "a percentage in (0, 100]", |x| {
                x > 0.0 && x <= 100.0
            })?;
            if let Some(prev) = plan.steps.last().filter(|&&prev| step <= prev) {
                return Err(format!(
                    "{path} {step} must be greater than the step before it, {prev}"
                ));
            }
            plan.steps.push(step);
        }
    }
    if let Some(y) = e.get("interval") {
        plan.interval = interval(y).map_err(|e| format!("rollout.interval: {e}"))?;
    }
    if let Some(y) = e.get("min_requests") {
        plan.min_requests = count("rollout.min_requests", y)?;
    }
    if let Some(y) = e.get("max_error_rate_delta") {
        let (path, what) = ("rollout.max_error_rate_delta:", "a number from 0 to 1");
        plan.max_error_rate_delta = number(path, y, what, |x| (0.0..=1.0).contains(&x))?;
    }
    if let Some(y) = e.get("max_p99_ratio") {
        let path = "rollout.max_p99_ratio:";
        plan.max_p99_ratio = number(path, y, "a finite number >= 1", |x| x >= 1.0)?;
    }
    if let Some(y) = e.get("paused") {
        let Yaml::Boolean(paused) = y else {
            return expected("rollout.paused", "true or false", y);
        };
        plan.paused = *paused;
    }
    Ok(plan)
}

pub(super) fn rollout_state(y: &Yaml) -> Result<RolloutState, String> {
    let e = entries("rollout_state", y, STATE_KEYS)?;
    let get = |key| required("rollout_state", &e, key);
    let candidate = version("rollout_state.candidate", get("candidate")?)?;
    let baseline = version("rollout_state.baseline", get("baseline")?)?;
    let phase = match get("phase")? {
        Yaml::String(s) => s.parse().map_err(|e| format!("rollout_state.phase: {e}"))?,
        other => return expected("rollout_state.phase", "a phase word", other),
    };
    let step = count("rollout_state.step", get("step")?)? as usize;
    let reason = match e.get("reason") {
        None => String::new(),
        Some(Yaml::String(s)) => s.clone(),
        Some(other) => return expected("rollout_state.reason", "a string", other),
    };
    Ok(RolloutState {
        candidate,
        baseline,
        phase,
        step,
        reason,
    })
}

/// A mapping's entries by name, after checking every key is accepted; null values are left
/// out, as if absent.
pub(super) fn entries<'a>(
    path: &str,
    y: &'a Yaml,
    accepted: &str,
) -> Result<BTreeMap<&'a str, &'a Yaml>, String> {
    let at = if path.is_empty() { "top level" } else { path };
    let Yaml::Hash(map) = y else {
        return expected(at, "a mapping", y);
    };
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let Some(name) = key
            .as_str()
            .filter(|k| accepted.split(' ').any(|a| a == *k))
        else {
            let accepted = accepted.replace(' ', ", ");
            return Err(format!(
                "{at}: unknown key {}; accepted keys: {accepted}",
                show(key)
            ));
        };
        if !value.is_null() {
            out.insert(name, value);
        }
    }
    Ok(out)
}

pub(super) fn required<'a>(
    path: &str,
    e: &BTreeMap<&str, &'a Yaml>,
    key: &str,
) -> Result<&'a Yaml, String> {
    e.get(key)
        .copied()
        .ok_or_else(|| format!("{path}.{key}: required but missing"))
}

/// A mapping from versions, each value converted by `value` (whose errors get the path and
/// version in front).
pub(super) fn version_map<T>(
    path: &str,
    y: &Yaml,
    value: impl Fn(&Yaml) -> Result<T, String>,
) -> Result<BTreeMap<u64, T>, String> {
    let Yaml::Hash(map) = y else {
        return expected(path, "a mapping from versions", y);
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let version = version(path, k)?;
        let v = value(v).map_err(|e| format!("{path}: version {version}: {e}"))?;
        if out.insert(version, v).is_some() {
            return Err(format!("{path}: version {version} is listed twice"));
        }
    }
    Ok(out)
}

/// A version: a YAML integer or string holding a positive integer.
pub(super) fn version(path: &str, y: &Yaml) -> Result<u64, String> {
    let v = match y {
        Yaml::Integer(n) => u64::try_from(*n).ok(),
        Yaml::String(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    };
    let error = || format!("{path}: version {} is not a positive integer", show(y));
    v.filter(|&v| v > 0).ok_or_else(error)
}

/// A finite YAML number (integer or float) for which `ok` holds, else
/// "<label> <value> must be <what>".
pub(super) fn number(
    label: &str,
    y: &Yaml,
    what: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<f64, String> {
    let x = match y {
        Yaml::Integer(n) => Some(*n as f64),
        Yaml::Real(_) => y.as_f64(),
        _ => None,
    };
    let error = || format!("{label} {} must be {what}", show(y));
    x.filter(|&x| x.is_finite() && ok(x)).ok_or_else(error)
}

pub(super) fn percent(x: f64) -> bool {
    (0.0..=100.0).contains(&x)
}

/// A non-negative YAML integer.
pub(super) fn count(path: &str, y: &Yaml) -> Result<u64, String> {
    match y {
        Yaml::Integer(n) if *n >= 0 => Ok(*n as u64),
        _ => Err(format!("{path}: {} must be an integer >= 0", show(y))),
    }
}

/// "<path>: expected <what>, got <value>"; without a path, just what follows it.
pub(super) fn expected<T>(path: &str, what: &str, y: &Yaml) -> Result<T, String> {
    Err(format!("{path}: expected {what}, got {}", show(y))
        .trim_start_matches(": ")
        .into())
}

pub(super) fn routing_key(y: &Yaml) -> Result<String, String> {
    let Yaml::String(s) = y else {
        return expected("", "a header name", y);
    };
    let (key, shown) = (s.to_ascii_lowercase(), show(y));
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if key.is_empty() {
        Err("expected a header name, got an empty string".into())
    } else if key.starts_with(':') {
        Err(format!(
            "{shown} is a pseudo-header; expected a metadata header"
        ))
    } else if let Some(c) = key.chars().find(|&c| !allowed(c)) {
        Err(format!(
            "{shown} is not a valid header name: {c:?} is not a-z, 0-9, '-', '_' or '.'"
        ))
    } else if key.starts_with("grpc-") || RESERVED_HEADERS.split_whitespace().any(|h| h == key) {
        Err(format!(
            "{shown} is reserved by the gRPC transport; expected an application header"
        ))
    } else if key.ends_with("-bin") {
        Err(format!(
            "{shown} names a binary (\"-bin\") header; expected a text header"
        ))
    } else {
        Ok(key)
    }
}

/// A positive duration: "<number><unit>" with unit ms, s, m or h, or a bare number of seconds.
pub(super) fn interval(y: &Yaml) -> Result<Duration, String> {
    let text = match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(n) => n.to_string(),
        _ => String::new(),
    };
    match parse_duration(&text) {
        Some(d) if d.is_zero() => Err(format!("{} must be greater than zero", show(y))),
        Some(d) => Ok(d),
        None => expected(
            "",
            "a duration such as \"60s\", \"500ms\", \"1.5s\" or \"2m\"",
            y,
        ),
    }
}

/// Parses "<digits>[.<digits>][unit]" exactly, in whole nanoseconds (finer digits are dropped).
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.');
    let (number, unit) = text.split_at(split.unwrap_or(text.len()));
    let unit = match unit.trim_start() {
        "" => 1_000_000_000,
        unit => UNITS.iter().find(|u| u.0 == unit)?.1,
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let digits = frac.len().min(18);
    let frac: u128 = format!("0{}", &frac[..digits]).parse().ok()?;
    let whole: u128 = format!("0{whole}").parse().ok()?;
    let nanos = whole.checked_mul(unit)? + frac * unit / 10u128.pow(digits as u32);
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Writes a duration in the largest unit that holds it exactly ("2m", "90s", "1500ms"), and
/// below a millisecond as decimal milliseconds ("0.25ms").
pub(super) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if let Some((name, size)) = UNITS.iter().find(|u| nanos.is_multiple_of(u.1)) {
        return format!("{}{name}", nanos / size);
    }
    let frac = format!("{:06}", nanos % 1_000_000);
    format!("{}.{}ms", nanos / 1_000_000, frac.trim_end_matches('0'))
}

/// A YAML double-quoted string, with escapes for quotes, backslashes and non-printable characters.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => out.extend(['\\', c]),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || "\u{2028}\u{2029}\u{feff}\u{fffe}\u{ffff}".contains(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out + "\""
}

/// A YAML value as it appears in an error message.
pub(super) fn show(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => format!("'{}'", printable(s)),
        Yaml::Real(s) => s.clone(),
        Yaml::Integer(n) => n.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => "null".into(),
        Yaml::Array(_) => "a list".into(),
        Yaml::Hash(_) => "a mapping".into(),
        Yaml::Alias(_) | Yaml::BadValue => "an invalid value".into(),
    }
}

/// `s` with control characters escaped, to keep messages and comments on one line.
pub(super) fn printable(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        out
    })
}
