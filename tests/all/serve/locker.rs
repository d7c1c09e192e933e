//! Locker's HTTP API (`GET /canhaz`, `/dohaz`, `/nowant`), through Python's
//! `urllib` and raw requests; on both stores (`both!`).

use super::{assert_error, held, token, Server};
use crate::support::{both, sorted_keys};
use serde_json::{json, Value};

both! {
    fn locker_canhaz_dohaz_nowant_through_urllib(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let wrong = "00000000-0000-4000-8000-000000000000";
        let got = server.urllib(&[
            "/canhaz/deploy/prod",
            "/canhaz/deploy/prod",
            "/dohaz/deploy/prod",
            "/canhaz/web?id=alice",
            "/canhaz/web?id=bob",
            "/dohaz/web",
            "/dohaz/free",
            &format!("/nowant/deploy/prod?token={wrong}"),
            "/canhaz/my%20app/caf%C3%A9?id=x",
        ]);
        assert_eq!(got.len(), 9);
        let (status, grant) = &got[0];
        assert_eq!(*status, 200, "{grant}");
        assert_eq!(sorted_keys(grant), ["fencing", "ok", "token"]);
        assert_eq!((&grant["ok"], &grant["fencing"]), (&json!(true), &json!(1)));
        let anonymous = token(grant);
        assert_eq!(got[1], (200, json!({"ok": false, "lockedBy": "?"})));
        assert_eq!(got[2], (200, json!({"lockedBy": "?"})));
        assert_eq!((got[3].0, &got[3].1["ok"]), (200, &json!(true)));
        let alices = token(&got[3].1);
        // The holder's id, never the requester's.
        assert_eq!(got[4], (200, json!({"ok": false, "lockedBy": "alice"})));
        assert_eq!(got[5], (200, json!({"lockedBy": "alice"})));
        assert_eq!(got[6], (200, json!({"lockedBy": null})));
        assert_eq!(got[7], (200, json!({"ok": false})));
        assert_eq!((got[8].0, &got[8].1["ok"]), (200, &json!(true)));

        // The paths are the resource names, percent-decoded.
        assert_eq!(
            locks.json(&["status", "deploy/prod", "--json"])["client"],
            Value::Null
        );
        assert_eq!(locks.json(&["status", "web", "--json"])["client"], "alice");
        assert_eq!(
            locks.json(&["status", "my app/café", "--json"])["client"],
            "x"
        );

        let got = server.urllib(&[
            &format!("/nowant/deploy/prod?token={alices}"),
            &format!("/nowant/deploy/prod?token={anonymous}"),
            "/dohaz/deploy/prod",
            &format!("/nowant/deploy/prod?token={anonymous}"),
        ]);
        assert_eq!(
            got,
            [
                (200, json!({"ok": false})),
                (200, json!({"ok": true})),
                (200, json!({"lockedBy": null})),
                (200, json!({"ok": false})),
            ]
        );
        assert_eq!(held(locks), ["my app/café", "web"]);
    }
}

both! {
    fn locker_hierarchy_and_flag_spellings(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let got = server.urllib(&[
            "/canhaz/foo/bar?id=c1",
            "/canhaz/foo?id=c2",
            "/canhaz/foo/zip?id=c3",
        ]);
        assert_eq!(got[0].1["ok"], true, "{got:?}");
        assert_eq!(got[1], (200, json!({"ok": false, "lockedBy": "c1"})));
        assert_eq!(got[2].1["ok"], true, "{got:?}");

        for (i, no) in ["False", "false", "0", "no"].into_iter().enumerate() {
            // A child taken with lockParents=no lets its parent be locked; a
            // parent taken with lockChildren=no lets its children be locked.
            let got = server.urllib(&[
                &format!("/canhaz/p{i}/child?id=kid&lockParents={no}"),
                &format!("/canhaz/p{i}?id=parent"),
                &format!("/canhaz/c{i}?id=parent&lockChildren={no}"),
                &format!("/canhaz/c{i}/child?id=kid"),
            ]);
            for (status, answer) in &got {
                assert_eq!(
                    (*status, &answer["ok"]),
                    (200, &json!(true)),
                    "{no}: {got:?}"
                );
            }
            let child = locks.json(&["status", &format!("p{i}/child"), "--json"]);
            assert_eq!(child["lock_parents"], false, "{no}");
            assert_eq!(child["lock_children"], true, "{no}");
        }
        for (i, yes) in ["True", "true", "1", "yes"].into_iter().enumerate() {
            let got = server.urllib(&[
                &format!("/canhaz/t{i}/child?id=kid&lockParents={yes}&lockChildren={yes}"),
                &format!("/canhaz/t{i}?id=parent"),
            ]);
            assert_eq!(got[0].1["ok"], true, "{yes}: {got:?}");
            assert_eq!(
                got[1],
                (200, json!({"ok": false, "lockedBy": "kid"})),
                "{yes}"
            );
        }

        // A flag that is neither: a JSON error, and nothing is locked.
        let before = held(locks);
        for bad in [
            "/canhaz/bad?lockParents=maybe",
            "/canhaz/bad?lockChildren=Nope",
        ] {
            let got = server.urllib(&[bad]);
            assert_error(&got[0], 400, "invalid-input");
        }
        // So are bad resource names.
        for bad in [
            "/canhaz/a/../b",
            "/canhaz/a//b",
            "/canhaz/",
            "/canhaz/a%00b",
        ] {
            assert_error(&server.get_json(bad), 400, "invalid-input");
        }
        assert_eq!(held(locks), before);
        assert_eq!(
            server.get_json("/dohaz/bad"),
            (200, json!({"lockedBy": null}))
        );
    }
}

both! {
    fn locker_ttl_gives_a_lease_that_expires(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let (status, grant) = server.get_json("/canhaz/job?id=a&ttl=0.3");
        assert_eq!(status, 200, "{grant}");
        assert_eq!(
            sorted_keys(&grant),
            ["expires_ms", "fencing", "ok", "token"]
        );
        assert_eq!((&grant["ok"], &grant["fencing"]), (&json!(true), &json!(1)));
        let shown = locks.json(&["status", "job", "--json"]);
        if !shown.is_null() {
            assert_eq!(
                (&shown["ttl_ms"], &shown["expires_ms"]),
                (&json!(300), &grant["expires_ms"])
            );
        }
        locks.sleep_past(grant["expires_ms"].as_u64().expect("expires_ms"));
        assert_eq!(
            server.get_json("/dohaz/job"),
            (200, json!({"lockedBy": null}))
        );
        let (status, next) = server.get_json("/canhaz/job?id=b");
        assert_eq!(sorted_keys(&next), ["fencing", "ok", "token"], "{next}");
        assert_eq!((status, &next["fencing"]), (200, &json!(2)));
        // The first holder's token opens nothing any more.
        let nowant = format!("/nowant/job?token={}", token(&grant));
        assert_eq!(server.get_json(&nowant), (200, json!({"ok": false})));
        assert_eq!(
            server.get_json("/dohaz/job"),
            (200, json!({"lockedBy": "b"}))
        );

        // Whole and fractional seconds; anything else is refused.
        let (status, long) = server.get_json("/canhaz/long?ttl=90&id=c");
        assert_eq!(status, 200, "{long}");
        assert_eq!(locks.json(&["status", "long", "--json"])["ttl_ms"], 90_000);
        for bad in ["abc", "0", "-1", "1e3", "30s", "", "2592001"] {
            let got = server.get_json(&format!("/canhaz/bad?ttl={bad}"));
            assert_error(&got, 400, "invalid-input");
        }
        assert_eq!(held(locks), ["job", "long"]);
    }
}

both! {
    fn locker_nowant_with_a_malformed_token_or_id_answers_ok_false(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let (status, grant) = server.get_json("/canhaz/my/resource?id=me");
        assert_eq!((status, &grant["ok"]), (200, &json!(true)), "{grant}");
        // The seed's own example, and ids no lock could ever have.
        for target in [
            "/nowant/my/resource?token=invalid-token",
            "/nowant/my/resource?token=",
            "/nowant/my/resource?id=a%0Ab",
            &format!("/nowant/my/resource?id={}", "x".repeat(300)),
            "/nowant/not%20held?token=invalid-token",
        ] {
            assert_eq!(
                server.get_json(target),
                (200, json!({"ok": false})),
                "{target}"
            );
        }
        assert_eq!(held(locks), ["my/resource"]);
        let target = format!("/nowant/my/resource?token={}", token(&grant));
        assert_eq!(server.get_json(&target), (200, json!({"ok": true})));
    }
}

both! {
    fn every_refusal_on_a_locker_path_is_in_lockers_shape(locks: &Locks) {
        let (_secrets, file) = crate::serve::token_file("s3cret");
        let server = Server::start(locks, &["--token-file", &file]);
        let bearer = [("Authorization", "Bearer s3cret")];
        /// Method, target, headers, status, error code.
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16, &'a str);
        let cases: [Case; 8] = [
            ("GET", "/canhaz/x", &[], 401, "unauthorized"),
            ("GET", "/dohaz/x", &[], 401, "unauthorized"),
            ("POST", "/canhaz/x", &bearer, 405, "method-not-allowed"),
            ("DELETE", "/nowant/x", &bearer, 405, "method-not-allowed"),
            ("GET", "/canhaz", &bearer, 404, "not-found"),
            ("GET", "/nowant", &bearer, 404, "not-found"),
            ("GET", "/dohaz", &bearer, 404, "not-found"),
            ("GET", "/canhaz/x?id=%FF", &bearer, 400, "bad-request"),
        ];
        for (method, target, headers, status, code) in cases {
            let got = server.send(&crate::serve::request(method, target, headers, None));
            let body = got.json();
            assert_eq!(
                (got.status, &body["ok"], &body["error"]["code"]),
                (status, &json!(false), &json!(code)),
                "{method} {target}: {got:?}"
            );
        }
        // Other paths keep the JSON API's shape.
        let got = server.send(&crate::serve::request("GET", "/canhazzz", &bearer, None));
        assert_eq!((got.status, got.json().get("ok")), (404, None), "{got:?}");
        assert_eq!(held(locks), Vec::<String>::new());
    }
}

both! {
    fn locker_ttl_below_a_millisecond_is_refused_as_the_message_says(locks: &Locks) {
        let server = Server::start(locks, &[]);
        for ttl in ["0.0001", "0.0009", "0.000999"] {
            let got = server.get_json(&format!("/canhaz/short?id=a&ttl={ttl}"));
            assert_error(&got, 400, "invalid-input");
            assert_eq!(got.1["ok"], json!(false), "{got:?}");
            let message = got.1["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("from 0.001 to"), "{message}");
        }
        assert_eq!(held(locks), Vec::<String>::new());
        // The least lease it names is taken.
        let (status, grant) = server.get_json("/canhaz/short?id=a&ttl=0.001");
        assert_eq!((status, &grant["ok"]), (200, &json!(true)), "{grant}");
    }
}
