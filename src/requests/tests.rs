use super::commands::{Command, parse};
use super::*;

#[test]
fn commands_parse_with_and_without_quotes() {
    assert_eq!(
        parse("request db-1 2h INC-123 disk full"),
        Some(Ok(Command::Request {
            target: "db-1".into(),
            duration: "2h".into(),
            reason: "INC-123 disk full".into()
        }))
    );
    assert_eq!(
        parse("request db-1 30m \"INC-1\""),
        Some(Ok(Command::Request {
            target: "db-1".into(),
            duration: "30m".into(),
            reason: "INC-1".into()
        }))
    );
    assert_eq!(parse("requests"), Some(Ok(Command::List)));
    assert_eq!(parse("approve 12"), Some(Ok(Command::Approve(12))));
    assert_eq!(
        parse("deny 12 'not now'"),
        Some(Ok(Command::Deny(12, "not now".into())))
    );
    assert_eq!(parse("logout"), None);
    assert_eq!(parse("ls -l"), None);
    for bad in [
        "request db-1",
        "request",
        "approve",
        "approve x",
        "approve 0",
        "approve 1 2",
        "deny 3",
        "requests all",
    ] {
        assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
    }
}

#[test]
fn reasons_are_bounded_and_printable() {
    assert_eq!(check_reason("  INC-1  ").unwrap(), "INC-1");
    assert!(check_reason("").is_err());
    assert!(check_reason("   ").is_err());
    assert!(check_reason(&"x".repeat(MAX_REASON)).is_ok());
    assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
    assert!(check_reason("a\u{1b}[2Jb").is_err());
    assert!(check_reason("a\nb").is_err());
}

#[test]
fn states_round_trip() {
    for s in State::ALL {
        assert_eq!(State::parse(s.as_str()), Some(s));
    }
    assert_eq!(State::parse("open"), None);
}
