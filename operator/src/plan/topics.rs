//! MQTT topic-filter algebra the plans need.

/// Whether every topic that `inner` matches is also matched by `outer` (MQTT 3.1.1 §4.7
/// matching: `+` one level, `#` this level and all below, including the parent itself).
pub fn filter_within(inner: &str, outer: &str) -> bool {
    let inner: Vec<&str> = inner.split('/').collect();
    let outer: Vec<&str> = outer.split('/').collect();
    for (i, o) in outer.iter().enumerate() {
        if *o == "#" {
            // `a/#` matches `a` and everything below it.
            return true;
        }
        let Some(level) = inner.get(i) else {
            return false;
        };
        match (*level, *o) {
            ("#", _) => return false,
            ("+", "+") => {}
            ("+", _) => return false,
            (_, "+") => {}
            (l, o) if l == o => {}
            _ => return false,
        }
    }
    // `outer` has no more levels: `inner` must have none either.
    inner.len() == outer.len()
}

/// The filters of `inner` that no filter of `outer` contains.
pub fn outside<'a>(inner: &'a [String], outer: &[String]) -> Vec<&'a str> {
    inner.iter().filter(|i| !outer.iter().any(|o| filter_within(i, o))).map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_follows_mqtt_matching() {
        let yes = [
            ("a/b", "a/b"),
            ("a/b", "a/+"),
            ("a/b", "a/#"),
            ("a", "a/#"),
            ("a/b/c", "#"),
            ("a/+", "a/+"),
            ("a/+", "a/#"),
            ("a/+/c", "+/+/c"),
            ("a/#", "a/#"),
            ("a/b/#", "a/#"),
            ("a/b/#", "a/+/#"),
            ("#", "#"),
        ];
        for (inner, outer) in yes {
            assert!(filter_within(inner, outer), "{inner} within {outer}");
        }
        let no = [
            ("a/c", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a/+"),
            ("a/#", "a/+/#"),
            ("a", "a/+"),
            ("a/b/c", "a/+"),
            ("a/b", "a/b/c"),
            ("#", "a/#"),
            ("b", "a/#"),
            ("a/b", "a/b/+"),
        ];
        for (inner, outer) in no {
            assert!(!filter_within(inner, outer), "{inner} not within {outer}");
        }
    }

    #[test]
    fn outside_names_the_offending_filters() {
        let asset = vec!["factory/line-1/#".to_owned(), "factory/+/status".to_owned()];
        let transfer = vec![
            "factory/line-1/temp".to_owned(),
            "factory/line-2/status".to_owned(),
            "factory/line-2/temp".to_owned(),
        ];
        assert_eq!(outside(&transfer, &asset), vec!["factory/line-2/temp"]);
    }
}
