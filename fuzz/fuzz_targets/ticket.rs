//! The ticket parser (`Ticket` and `Target` `FromStr`) on arbitrary strings.
//!
//! Input: `[mode, rest...]`. Even mode: `rest` is the text (if UTF-8). Odd mode:
//! `rest` is the postcard body, wrapped as `qpt1` + base32, so the fuzzer reaches
//! the struct decoder behind the text encoding. Must never panic; a ticket that
//! parses is within its limits and its text form parses back to it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_peer::proto::ticket::{Target, Ticket, MAX_HOLDERS};
use quic_peer::proto::wire::MAX_ADDRS_PER_PEER;
use quic_peer::proto::Hash;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        }
    } else {
        format!("qpt1{}", data_encoding::BASE32_DNSSEC.encode(rest))
    };
    let ticket = text.parse::<Ticket>();
    if let Ok(t) = &ticket {
        assert!(t.holders.len() <= MAX_HOLDERS);
        assert!(t
            .holders
            .iter()
            .all(|h| h.addrs.len() <= MAX_ADDRS_PER_PEER));
        let s = t.to_string();
        assert_eq!(s.parse::<Ticket>().expect("own text parses"), *t);
        let upper = format!("qpt1{}", s["qpt1".len()..].to_ascii_uppercase());
        assert_eq!(upper.parse::<Ticket>().expect("either case parses"), *t);
    }
    match text.parse::<Target>() {
        Ok(Target::Ticket(t)) => {
            assert_eq!(text.trim().parse::<Ticket>().expect("same ticket"), t);
        }
        Ok(Target::Id(h)) => {
            assert_eq!(h.to_string().parse::<Hash>().expect("id text parses"), h);
            assert!(ticket.is_err());
        }
        Err(_) => assert!(ticket.is_err()),
    }
});
