//! Matching events against patterns (Python: `QEMUMachine.event_match`).
//!
//! A pattern is a JSON value compared with the *whole* event object
//! (`{"event": ..., "data": ..., "timestamp": ...}`):
//!
//! - `null` matches any value;
//! - an object matches an object that has every member the pattern names (even
//!   those whose pattern is `null`), each matching recursively; members the pattern
//!   does not name are ignored (a subset match). It never matches a value that is
//!   not an object;
//! - anything else (strings, numbers, booleans, lists) must be equal.
//!
//! So `{"data": {"guest": false}}` matches a `SHUTDOWN` event caused by the host,
//! and `{"data": {"reason": null}}` matches any event whose data has a `reason`.
//!
//! ```
//! use qemu_machine::event_match;
//! use serde_json::json;
//! let event = json!({"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}});
//! assert!(event_match(&event, &json!({"data": {"guest": false}})));
//! assert!(event_match(&event, &json!({"data": {"reason": null}})));
//! assert!(!event_match(&event, &json!({"data": {"guest": true}})));
//! assert!(!event_match(&event, &json!({"data": {"missing": null}})));
//! ```

use serde_json::{Map, Value};

use qemu_qmp::Event;

/// True if `event` matches `pattern`; see the [module documentation](self).
pub fn event_match(event: &Value, pattern: &Value) -> bool {
    match pattern {
        Value::Null => true,
        Value::Object(p) => match event {
            Value::Object(e) => object_match(e, p),
            _ => false,
        },
        other => other == event,
    }
}

fn object_match(event: &Map<String, Value>, pattern: &Map<String, Value>) -> bool {
    pattern
        .iter()
        .all(|(k, p)| event.get(k).is_some_and(|e| event_match(e, p)))
}

/// True if the event is named `name` and matches `pattern` (`None` matches any event
/// of that name). The pattern applies to the whole event object.
pub fn event_matches(event: &Event, name: &str, pattern: Option<&Value>) -> bool {
    if event.name() != name {
        return false;
    }
    match pattern {
        None | Some(Value::Null) => true,
        Some(Value::Object(p)) => object_match(event.as_object(), p),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shutdown() -> Value {
        json!({
            "event": "SHUTDOWN",
            "data": {"guest": false, "reason": "host-qmp-quit", "list": [1, 2, 3],
                     "nested": {"a": {"b": 1, "c": 2}}},
            "timestamp": {"seconds": 1, "microseconds": 2}
        })
    }

    #[test]
    fn null_is_a_wildcard() {
        let e = shutdown();
        assert!(event_match(&e, &Value::Null));
        assert!(event_match(&e, &json!({"data": null})));
        assert!(event_match(
            &e,
            &json!({"data": {"guest": null, "reason": null}})
        ));
        assert!(event_match(&json!(17), &Value::Null));
    }

    #[test]
    fn a_null_still_needs_the_member() {
        assert!(!event_match(&shutdown(), &json!({"data": {"nope": null}})));
        assert!(!event_match(
            &json!({"event": "STOP"}),
            &json!({"data": null})
        ));
    }

    #[test]
    fn objects_match_as_nested_subsets() {
        let e = shutdown();
        assert!(event_match(&e, &json!({})));
        assert!(event_match(&e, &json!({"event": "SHUTDOWN"})));
        assert!(event_match(&e, &json!({"data": {"guest": false}})));
        assert!(event_match(
            &e,
            &json!({"data": {"nested": {"a": {"c": 2}}}})
        ));
        assert!(event_match(&e, &json!({"data": {"nested": {"a": {}}}})));
        assert!(!event_match(
            &e,
            &json!({"data": {"nested": {"a": {"c": 3}}}})
        ));
        assert!(!event_match(
            &e,
            &json!({"data": {"nested": {"a": {"d": 3}}}})
        ));
    }

    #[test]
    fn lists_and_scalars_compare_equal() {
        let e = shutdown();
        assert!(event_match(&e, &json!({"data": {"list": [1, 2, 3]}})));
        assert!(!event_match(&e, &json!({"data": {"list": [1, 2]}})));
        assert!(!event_match(&e, &json!({"data": {"list": [3, 2, 1]}})));
        assert!(event_match(
            &e,
            &json!({"data": {"reason": "host-qmp-quit"}})
        ));
        assert!(!event_match(&e, &json!({"data": {"reason": "host"}})));
        assert!(!event_match(&e, &json!({"data": {"guest": 0}})));
        assert!(event_match(&json!(1.5), &json!(1.5)));
    }

    #[test]
    fn an_object_pattern_never_matches_a_non_object() {
        let e = shutdown();
        assert!(!event_match(&e, &json!({"data": {"reason": {"x": 1}}})));
        assert!(!event_match(&e, &json!({"data": {"list": {}}})));
        assert!(!event_match(&json!("SHUTDOWN"), &json!({})));
    }

    #[test]
    fn mismatched_types_do_not_match() {
        let e = shutdown();
        assert!(!event_match(&e, &json!("SHUTDOWN")));
        assert!(!event_match(&e, &json!([])));
        assert!(!event_match(&e, &json!({"event": ["SHUTDOWN"]})));
    }

    #[test]
    fn event_matches_checks_the_name_too() {
        let ev = Event::from_object(shutdown().as_object().unwrap().clone()).unwrap();
        assert!(event_matches(&ev, "SHUTDOWN", None));
        assert!(!event_matches(&ev, "STOP", None));
        assert!(event_matches(
            &ev,
            "SHUTDOWN",
            Some(&json!({"data": {"guest": false}}))
        ));
        assert!(!event_matches(
            &ev,
            "SHUTDOWN",
            Some(&json!({"data": {"guest": true}}))
        ));
        assert!(event_matches(&ev, "SHUTDOWN", Some(&Value::Null)));
        assert!(!event_matches(&ev, "SHUTDOWN", Some(&json!("SHUTDOWN"))));
    }
}
