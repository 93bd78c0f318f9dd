//! The event schema: both event types parse (strings borrowed), every feature value form is
//! read, and each malformed event is refused with the reason it is counted under.

use kiln_learn::event::{parse_line, Action, Event, EventErrorKind, FeatureValue, Id};
use std::borrow::Cow;

#[test]
fn impressions_and_actions_parse() {
    let line = br#"{"type":"impression","id":"imp-1","ts_ms":1733475000000,"features":{"user_id":"u42","item_id":"i7","hour":11,"genres":["Comedy","Crime"],"mixed":[1,"a"],"none":null,"esc":"a\"b"},"dense":[0.1,2],"extra":{"x":1}}"#;
    let Event::Impression(imp) = parse_line(line).unwrap() else {
        panic!("an impression")
    };
    assert_eq!(imp.id, "imp-1");
    assert!(matches!(imp.id, Cow::Borrowed(_)));
    assert_eq!(imp.ts_ms, 1_733_475_000_000);
    assert_eq!(imp.dense, Some(vec![0.1, 2.0]));
    let f: Vec<(&str, &FeatureValue)> = imp.features.iter().map(|(k, v)| (k.as_ref(), v)).collect();
    assert_eq!(f[0], ("user_id", &FeatureValue::One(Id::Str("u42".into()))));
    assert_eq!(f[2], ("hour", &FeatureValue::One(Id::Int(11))));
    assert_eq!(
        f[3].1.ids(),
        [Id::Str("Comedy".into()), Id::Str("Crime".into())]
    );
    assert_eq!(f[4].1.ids(), [Id::Int(1), Id::Str("a".into())]);
    assert_eq!(f[5], ("none", &FeatureValue::Null));
    assert_eq!(f[6].1.ids(), [Id::Str("a\"b".into())]);

    let line =
        b"{\"type\":\"action\",\"id\":\"imp-1\",\"ts_ms\":1733475003000,\"action\":\"click\"}\n";
    assert_eq!(
        parse_line(line).unwrap(),
        Event::Action(Action {
            id: "imp-1".into(),
            ts_ms: 1_733_475_003_000,
            action: "click".into()
        })
    );
    // an impression without dense, integers at the INT64 edges
    let line = br#"{"type":"impression","id":"i","ts_ms":0,"features":{"a":[-9223372036854775808,9223372036854775807]}}"#;
    let Event::Impression(imp) = parse_line(line).unwrap() else {
        panic!("an impression")
    };
    assert_eq!(imp.dense, None);
    assert_eq!(
        imp.features[0].1.ids(),
        [Id::Int(i64::MIN), Id::Int(i64::MAX)]
    );
}

#[test]
fn malformed_events_say_why() {
    use EventErrorKind::*;
    let cases: [(&str, EventErrorKind, &str); 14] = [
        ("not json", Json, ""),
        ("{\"type\":\"action\"", Json, ""),
        ("[1,2]", WrongType, ""),
        ("{\"type\":\"action\",\"ts_ms\":1,\"action\":\"click\"}", MissingField, "`id`"),
        ("{\"type\":\"action\",\"id\":\"i\",\"action\":\"click\"}", MissingField, "`ts_ms`"),
        ("{\"type\":\"action\",\"id\":\"i\",\"ts_ms\":1}", MissingField, "`action`"),
        ("{\"type\":\"impression\",\"id\":\"i\",\"ts_ms\":1}", MissingField, "`features`"),
        ("{\"id\":\"i\",\"ts_ms\":1}", MissingField, "`type`"),
        ("{\"type\":\"view\",\"id\":\"i\",\"ts_ms\":1}", UnknownType, "view"),
        ("{\"type\":\"action\",\"id\":\"i\",\"ts_ms\":-5,\"action\":\"c\"}", WrongType, ""),
        ("{\"type\":\"action\",\"id\":7,\"ts_ms\":1,\"action\":\"c\"}", WrongType, ""),
        ("{\"type\":\"impression\",\"id\":\"i\",\"ts_ms\":1,\"features\":{\"a\":1.5}}", WrongType, "features.a"),
        ("{\"type\":\"impression\",\"id\":\"i\",\"ts_ms\":1,\"features\":{\"g\":[\"x\",{}]}}", WrongType, "features.g"),
        ("{\"type\":\"impression\",\"id\":\"i\",\"ts_ms\":1,\"features\":{\"a\":18446744073709551615}}", WrongType, "INT64"),
    ];
    for (line, kind, names) in cases {
        let e = parse_line(line.as_bytes()).unwrap_err();
        assert_eq!(e.kind, kind, "{line}: {e}");
        assert!(e.message.contains(names), "{line}: {e}");
        assert!(e.to_string().starts_with(kind.reason()), "{e}");
    }
    // a number no f32 holds is a wrong value
    let e =
        parse_line(br#"{"type":"impression","id":"i","ts_ms":1,"features":{},"dense":[1e999]}"#)
            .unwrap_err();
    assert_eq!(e.kind, WrongType, "{e}");
    // a syntax error inside the features object stays a JSON error
    let e =
        parse_line(b"{\"type\":\"impression\",\"id\":\"i\",\"ts_ms\":1,\"features\":{\"a\":[1,}}")
            .unwrap_err();
    assert_eq!(e.kind, Json, "{e}");
}
