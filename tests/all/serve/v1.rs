//! The JSON API, `/v1`: lock, unlock, renew, status, list, force-unlock;
//! fencing, leases, retries by request id, and the shape of its bodies; on
//! both stores (`both!`).

use super::{
    assert_error, assert_error_response, held, read_response, request, token, token_file, Server,
};
use crate::support::{both, sorted_keys, GRANT_KEYS};
use serde_json::{json, Value};
use std::io::{BufReader, Write};

both! {
    fn v1_lock_and_unlock_with_fencing_and_refusals(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let (status, grant) = server.post_json(
            "/v1/lock",
            &json!({"resource": "/db/main/", "client": "ci-1"}),
        );
        assert_eq!(status, 200, "{grant}");
        assert_eq!(sorted_keys(&grant), GRANT_KEYS);
        assert_eq!(grant["resource"], "db/main");
        assert_eq!(grant["client"], "ci-1");
        assert_eq!(grant["fencing"], 1);
        assert_eq!(
            (&grant["lock_parents"], &grant["lock_children"]),
            (&json!(true), &json!(true))
        );
        token(&grant);
        let shown = locks.json(&["status", "db/main", "--json"]);
        assert_eq!(
            (&shown["fencing"], &shown["since_ms"]),
            (&grant["fencing"], &grant["since_ms"])
        );

        let got = server.post_json(
            "/v1/lock",
            &json!({"resource": "db/main/x", "client": "ci-2"}),
        );
        assert_error(&got, 409, "already-locked");
        assert_eq!(got.1["error"]["holder"], "ci-1");
        let got = server.post_json(
            "/v1/unlock",
            &json!({"resource": "db/main", "client": "ci-2"}),
        );
        assert_error(&got, 403, "not-owner");
        assert_eq!(got.1["error"]["holder"], "ci-1");

        let (status, released) = server.post_json(
            "/v1/unlock",
            &json!({"resource": "db/main", "client": "ci-1"}),
        );
        assert_eq!(status, 200, "{released}");
        let mut expected = grant.clone();
        expected.as_object_mut().expect("object").remove("token");
        assert_eq!(released, expected);
        let got = server.post_json(
            "/v1/unlock",
            &json!({"resource": "db/main", "client": "ci-1"}),
        );
        assert_error(&got, 404, "not-locked");

        // Fencing grows per resource; an anonymous lock is released by token.
        let (status, again) = server.post_json(
            "/v1/lock",
            &json!({
                "resource": "db/main",
                "lock_parents": false,
                "lock_children": false,
                "wait_ms": 0
            }),
        );
        assert_eq!(status, 200, "{again}");
        assert_eq!(
            (&again["client"], &again["fencing"]),
            (&Value::Null, &json!(2))
        );
        assert_eq!(
            (&again["lock_parents"], &again["lock_children"]),
            (&json!(false), &json!(false))
        );
        let got = server.post_json(
            "/v1/lock",
            &json!({"resource": "db/main", "client": "ci-2"}),
        );
        assert_eq!(got.1["error"]["holder"], "?", "{got:?}");
        let wrong = "00000000-0000-4000-8000-000000000000";
        let got = server.post_json(
            "/v1/unlock",
            &json!({"resource": "db/main", "token": wrong}),
        );
        assert_error(&got, 403, "not-owner");
        let (status, released) = server.post_json(
            "/v1/unlock",
            &json!({"resource": "db/main", "token": token(&again)}),
        );
        assert_eq!(
            (status, &released["fencing"]),
            (200, &json!(2)),
            "{released}"
        );
        assert_eq!(locks.json(&["status", "db/main", "--json"]), Value::Null);
    }
}

both! {
    fn v1_status_and_list_with_prefix(locks: &Locks) {
        let server = Server::start(locks, &[]);
        assert_eq!(server.get_json("/v1/list"), (200, json!({"locks": []})));
        for (resource, client) in [
            ("b", "two"),
            ("a/y", "one"),
            ("a/x", "one"),
            ("ab", "three"),
        ] {
            let (status, grant) =
                server.post_json("/v1/lock", &json!({"resource": resource, "client": client}));
            assert_eq!(status, 200, "{resource}: {grant}");
        }
        let (status, all) = server.get_json("/v1/list");
        assert_eq!(status, 200, "{all}");
        let names: Vec<&str> = all["locks"]
            .as_array()
            .unwrap_or_else(|| panic!("{all}"))
            .iter()
            .map(|h| h["resource"].as_str().expect("resource"))
            .collect();
        assert_eq!(names, ["a/x", "a/y", "ab", "b"]);
        // The same holders the CLI shows.
        assert_eq!(all["locks"], locks.json(&["status", "--json"]));

        let (status, some) = server.get_json("/v1/list?prefix=a/");
        assert_eq!(status, 200, "{some}");
        let names: Vec<&Value> = some["locks"]
            .as_array()
            .expect("list")
            .iter()
            .map(|h| &h["resource"])
            .collect();
        assert_eq!(names, [&json!("a/x"), &json!("a/y")]);

        let (status, one) = server.get_json("/v1/status?resource=a/x");
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["lock"], locks.json(&["status", "a/x", "--json"]));
        assert_eq!(one["lock"]["client"], "one");
        assert_eq!(
            server.get_json("/v1/status?resource=free"),
            (200, json!({"lock": null}))
        );
        assert_error(
            &server.get_json("/v1/status?resource=a/../b"),
            400,
            "invalid-input",
        );
    }
}

both! {
    fn v1_wait_ms_gets_the_lock_when_the_holder_lets_go(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let first = json!({"resource": "queue", "client": "first"});
        assert_eq!(server.post_json("/v1/lock", &first).0, 200);

        // Held: no wait, or a wait that runs out, is a refusal.
        for wait in [0, 300] {
            let got = server.post_json(
                "/v1/lock",
                &json!({"resource": "queue", "client": "second", "wait_ms": wait}),
            );
            assert_error(&got, 409, "already-locked");
            assert_eq!(got.1["error"]["holder"], "first", "wait_ms {wait}");
        }

        // A long wait, sent (all of it) before the holder lets go.
        let body = json!({"resource": "queue", "client": "second", "wait_ms": 50_000}).to_string();
        let mut waiter = server.connect();
        waiter
            .write_all(&request("POST", "/v1/lock", &[], Some(&body)))
            .expect("send the waiting request");
        let (status, released) = server.post_json("/v1/unlock", &first);
        assert_eq!(status, 200, "{released}");
        let got = read_response(&mut BufReader::new(waiter)).expect("the waiter's response");
        assert_eq!(got.status, 200, "{got:?}");
        let grant = got.json();
        assert_eq!(
            (&grant["client"], &grant["fencing"]),
            (&json!("second"), &json!(2))
        );
        assert_eq!(
            locks.json(&["status", "queue", "--json"])["client"],
            "second"
        );
    }
}

both! {
    fn v1_lease_expires_for_the_cli_which_takes_it_over_with_a_higher_fencing(locks: &Locks) {
        let server = Server::start(locks, &[]);
        // A long lease first: every holder shows its expiry.
        let (status, long) = server.post_json(
            "/v1/lock",
            &json!({"resource": "long", "client": "v1", "ttl_ms": 60_000}),
        );
        assert_eq!(status, 200, "{long}");
        let since = long["since_ms"].as_u64().expect("since_ms");
        assert_eq!(
            (&long["ttl_ms"], &long["expires_ms"]),
            (&json!(60_000), &json!(since + 60_000)),
            "{long}"
        );
        let mut shown = long.clone();
        shown.as_object_mut().expect("object").remove("token");
        assert_eq!(locks.json(&["status", "long", "--json"]), shown);
        assert_eq!(
            server.get_json("/v1/status?resource=long"),
            (200, json!({ "lock": shown }))
        );
        assert_eq!(server.get_json("/v1/list").1["locks"], json!([shown]));

        // A short one runs out: the CLI then sees the resource free.
        let (status, short) = server.post_json(
            "/v1/lock",
            &json!({"resource": "short", "client": "v1", "ttl_ms": 300}),
        );
        assert_eq!((status, &short["ttl_ms"]), (200, &json!(300)), "{short}");
        locks.sleep_past(short["expires_ms"].as_u64().expect("expires_ms"));
        assert_eq!(locks.json(&["status", "short", "--json"]), Value::Null);
        // ...and so does the stock `wasmtime run` of the component (which
        // knows only the lock directory).
        if !locks.is_etcd() {
            let stock = crate::wasmtime_cli::wasm(locks, &["status", "short", "--json"]);
            assert_eq!(
                (stock.code, stock.stdout.as_str()),
                (0, "null\n"),
                "{stock:?}"
            );
        }
        assert_eq!(held(locks), ["long"]);
        assert_eq!(
            server.get_json("/v1/status?resource=short"),
            (200, json!({"lock": null}))
        );
        // Its owner learns that it lost the lock, not that it is "not locked".
        for got in [
            server.post_json("/v1/renew", &json!({"resource": "short", "client": "v1"})),
            server.post_json(
                "/v1/unlock",
                &json!({"resource": "short", "token": token(&short)}),
            ),
        ] {
            assert_error(&got, 410, "lease-expired");
        }

        // The CLI takes it over with the next fencing number.
        let taken = locks.json(&["lock", "short", "--client", "cli", "--json"]);
        let fencing = short["fencing"].as_u64().expect("fencing");
        assert_eq!(
            (&taken["client"], &taken["fencing"]),
            (&json!("cli"), &json!(fencing + 1)),
            "{taken}"
        );
        // The lost holder's calls still say why, and change nothing.
        for got in [
            server.post_json(
                "/v1/unlock",
                &json!({"resource": "short", "token": token(&short)}),
            ),
            server.post_json(
                "/v1/renew",
                &json!({"resource": "short", "token": token(&short), "ttl_ms": 60_000}),
            ),
            server.post_json("/v1/unlock", &json!({"resource": "short", "client": "v1"})),
        ] {
            assert_error(&got, 410, "lease-expired");
            let message = got.1["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("short"), "{got:?}");
        }
        assert_eq!(locks.json(&["status", "short", "--json"])["client"], "cli");
    }
}

both! {
    fn v1_renew_keeps_the_fencing_and_moves_the_expiry(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let (status, grant) = server.post_json(
            "/v1/lock",
            &json!({"resource": "job", "client": "w", "ttl_ms": 60_000}),
        );
        assert_eq!(status, 200, "{grant}");
        let (status, renewed) = server.post_json(
            "/v1/renew",
            &json!({"resource": "job", "token": token(&grant), "ttl_ms": 120_000}),
        );
        assert_eq!(status, 200, "{renewed}");
        assert_eq!(sorted_keys(&renewed), {
            let mut keys = GRANT_KEYS.to_vec();
            keys.retain(|k| *k != "token");
            keys.extend(["expires_ms", "ttl_ms"]);
            keys.sort();
            keys
        });
        for same in ["resource", "client", "fencing", "since_ms"] {
            assert_eq!(renewed[same], grant[same], "{same}: {renewed}");
        }
        assert_eq!(renewed["ttl_ms"], 120_000);
        let before = grant["expires_ms"].as_u64().expect("expires_ms");
        let after = renewed["expires_ms"].as_u64().expect("expires_ms");
        assert!(after > before, "{grant} -> {renewed}");
        assert_eq!(
            server.get_json("/v1/status?resource=job").1["lock"],
            renewed
        );
        // By client id, without a length: the lease's own length again.
        let (status, again) =
            server.post_json("/v1/renew", &json!({"resource": "job", "client": "w"}));
        assert_eq!(
            (status, &again["fencing"], &again["ttl_ms"]),
            (200, &grant["fencing"], &json!(120_000)),
            "{again}"
        );
        // The token still releases it.
        let (status, released) = server.post_json(
            "/v1/unlock",
            &json!({"resource": "job", "token": token(&grant)}),
        );
        assert_eq!((status, &released["fencing"]), (200, &grant["fencing"]));

        // Refusals, as unlock's; bad input.
        let (status, _) = server.post_json("/v1/lock", &json!({"resource": "job", "client": "w"}));
        assert_eq!(status, 200);
        let got = server.post_json(
            "/v1/renew",
            &json!({"resource": "job", "client": "other", "ttl_ms": 1000}),
        );
        assert_error(&got, 403, "not-owner");
        assert_eq!(got.1["error"]["holder"], "w");
        let got = server.post_json(
            "/v1/renew",
            &json!({"resource": "free", "client": "w", "ttl_ms": 1000}),
        );
        assert_error(&got, 404, "not-locked");
        // A lock without a lease gets one only with a length.
        let got = server.post_json("/v1/renew", &json!({"resource": "job", "client": "w"}));
        assert_error(&got, 400, "invalid-input");
        let (status, leased) = server.post_json(
            "/v1/renew",
            &json!({"resource": "job", "client": "w", "ttl_ms": 5000}),
        );
        assert_eq!((status, &leased["ttl_ms"]), (200, &json!(5000)), "{leased}");
        for bad in [
            json!({"resource": "job", "client": "w", "ttl_ms": 0}),
            json!({"resource": "job", "client": "w", "ttl_ms": 2_592_000_001u64}),
        ] {
            assert_error(&server.post_json("/v1/renew", &bad), 400, "invalid-input");
            assert_error(
                &server.post_json(
                    "/v1/lock",
                    &json!({"resource": "other", "ttl_ms": bad["ttl_ms"]}),
                ),
                400,
                "invalid-input",
            );
        }
        for bad in [
            json!({"resource": "job"}),
            json!({"resource": "job", "client": "w", "token": token(&grant)}),
            json!({"resource": "job", "client": "w", "ttl_ms": -5}),
            json!({"resource": "job", "client": "w", "wait_ms": 5}),
        ] {
            assert_error(&server.post_json("/v1/renew", &bad), 400, "bad-request");
        }
        assert_error(&server.get_json("/v1/renew"), 405, "method-not-allowed");
        assert_eq!(held(locks), ["job"]);
        assert_eq!(locks.json(&["status", "job", "--json"])["ttl_ms"], 5000);
    }
}

both! {
    fn v1_request_id_retry_returns_the_same_grant_while_held(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let call =
            json!({
                "resource": "deploy",
                "client": "ci",
                "request_id": "ci-run-17",
                "ttl_ms": 60_000
            });
        let (status, grant) = server.post_json("/v1/lock", &call);
        assert_eq!(status, 200, "{grant}");
        token(&grant);
        // The answer was lost, say: the retry gets the same grant, token and all.
        let (status, retried) = server.post_json("/v1/lock", &call);
        assert_eq!((status, &retried), (200, &grant));
        // Another request id is another attempt, refused as any other.
        let mut other = call.clone();
        other["request_id"] = json!("ci-run-18");
        let got = server.post_json("/v1/lock", &other);
        assert_error(&got, 409, "already-locked");
        assert_eq!(got.1["error"]["holder"], "ci");
        let mut anonymous = call.clone();
        anonymous
            .as_object_mut()
            .expect("object")
            .remove("request_id");
        assert_error(
            &server.post_json("/v1/lock", &anonymous),
            409,
            "already-locked",
        );

        // Once released, the same id makes a new grant.
        let (status, _) = server.post_json(
            "/v1/unlock",
            &json!({"resource": "deploy", "token": token(&retried)}),
        );
        assert_eq!(status, 200);
        let (status, next) = server.post_json("/v1/lock", &call);
        assert_eq!(status, 200, "{next}");
        assert_eq!(
            next["fencing"],
            grant["fencing"].as_u64().expect("fencing") + 1
        );
        assert_ne!(token(&next), token(&grant));
        let bad = json!({"resource": "x", "request_id": ""});
        assert_error(&server.post_json("/v1/lock", &bad), 400, "invalid-input");
        assert_eq!(held(locks), ["deploy"]);
    }
}

both! {
    fn v1_force_unlock_needs_the_daemon_token_and_names_the_holder(locks: &Locks) {
        // Without --token-file nobody has proved anything: refused.
        let server = Server::start(locks, &[]);
        let (status, grant) =
            server.post_json("/v1/lock", &json!({"resource": "stuck", "client": "gone"}));
        assert_eq!(status, 200, "{grant}");
        let got = server.post_json("/v1/unlock", &json!({"resource": "stuck", "force": true}));
        assert_error(&got, 403, "forbidden");
        let message = got.1["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("--token-file"), "{got:?}");
        assert_eq!(locks.json(&["status", "stuck", "--json"])["client"], "gone");
        drop(server);

        let (_secrets, file) = token_file("operator-token");
        let server = Server::start(locks, &["--token-file", &file]);
        let bearer = [("Authorization", "Bearer operator-token")];
        let post = |body: Value| {
            let got = server.send(&request(
                "POST",
                "/v1/unlock",
                &bearer,
                Some(&body.to_string()),
            ));
            (got.status, got.json())
        };
        // Not with a key as well.
        let got = post(json!({"resource": "stuck", "force": true, "client": "gone"}));
        assert_error(&got, 400, "bad-request");
        // `force: false` is a plain unlock, which needs a key.
        let got = post(json!({"resource": "stuck", "force": false}));
        assert_error(&got, 400, "bad-request");
        let (status, broken) = post(json!({"resource": "stuck", "force": true}));
        assert_eq!(status, 200, "{broken}");
        let mut expected = grant.clone();
        expected.as_object_mut().expect("object").remove("token");
        assert_eq!(broken, expected);
        assert_eq!(locks.json(&["status", "stuck", "--json"]), Value::Null);
        let got = post(json!({"resource": "stuck", "force": true}));
        assert_error(&got, 404, "not-locked");
        // The holder's key opens nothing now; the fencing sequence goes on.
        let got = post(json!({"resource": "stuck", "client": "gone"}));
        assert_error(&got, 404, "not-locked");
        let taken = locks.json(&["lock", "stuck", "--client", "next", "--json"]);
        assert_eq!(
            taken["fencing"],
            grant["fencing"].as_u64().expect("fencing") + 1
        );
        // Without the token, the request is not even read.
        let got = server.post_json("/v1/unlock", &json!({"resource": "stuck", "force": true}));
        assert_error(&got, 401, "unauthorized");
        assert_eq!(locks.json(&["status", "stuck", "--json"])["client"], "next");
    }
}

both! {
    fn v1_list_pages_through_limit_after_and_next(locks: &Locks) {
        let server = Server::start(locks, &[]);
        for name in ["p/e", "p/a", "p/c", "p/b", "p/d/x", "q"] {
            let (status, grant) = server.post_json("/v1/lock", &json!({"resource": name}));
            assert_eq!(status, 200, "{grant}");
        }
        let names = |page: &Value| -> Vec<String> {
            let locks = page["locks"].as_array().expect("locks");
            locks
                .iter()
                .map(|h| h["resource"].as_str().expect("resource").to_string())
                .collect()
        };
        // Without a limit, a page of up to 1000: all, and no `next`.
        let (status, all) = server.get_json("/v1/list?prefix=p");
        assert_eq!(status, 200, "{all}");
        assert_eq!(names(&all), ["p/a", "p/b", "p/c", "p/d/x", "p/e"]);
        assert_eq!(sorted_keys(&all), ["locks"]);

        let mut pages = Vec::new();
        let mut target = "/v1/list?prefix=p&limit=2".to_string();
        loop {
            let (status, page) = server.get_json(&target);
            assert_eq!(status, 200, "{page}");
            pages.push(names(&page));
            match page.get("next") {
                Some(next) => {
                    let next = next.as_str().expect("next is a resource");
                    assert_eq!(
                        Some(next),
                        pages.last().and_then(|p| p.last()).map(String::as_str)
                    );
                    target = format!("/v1/list?prefix=p&limit=2&after={next}");
                }
                None => break,
            }
        }
        assert_eq!(
            pages,
            [vec!["p/a", "p/b"], vec!["p/c", "p/d/x"], vec!["p/e"]]
        );
        // A page that ends exactly at the last lock has no `next`.
        let (_, page) = server.get_json("/v1/list?prefix=p&limit=1&after=p/d/x");
        assert_eq!(
            (names(&page), page.get("next")),
            (vec!["p/e".to_string()], None)
        );
        let (_, page) = server.get_json("/v1/list?limit=10000&after=p/e");
        assert_eq!(names(&page), ["q"]);

        for bad in ["0", "10001", "-1", "two", ""] {
            let got = server.get_json(&format!("/v1/list?limit={bad}"));
            assert_error(&got, 400, "invalid-input");
        }
    }
}

both! {
    fn v1_bodies_are_json_objects_and_null_is_refused_but_for_an_anonymous_client(locks: &Locks) {
        let server = Server::start(locks, &[]);
        // A struct reads an array field by field: not a lock request.
        for body in [
            r#"["r", "a"]"#,
            r#"["r", "a", true, true, 0, null, null]"#,
            "7",
            "\"r\"",
            "",
        ] {
            let got = server.send(&request("POST", "/v1/lock", &[], Some(body)));
            assert_error_response(&got, 400, "bad-request");
            assert!(got.body.contains("not a JSON object"), "{got:?}");
        }
        assert_eq!(held(locks), Vec::<String>::new());

        let (status, grant) =
            server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
        assert_eq!(status, 200, "{grant}");
        // Only /v1/lock's client may be null (an anonymous lock); every other
        // optional field is given a value of its type, or left out.
        for (route, body) in [
            (
                "/v1/unlock",
                json!({"resource": "r", "client": "a", "token": null}),
            ),
            (
                "/v1/unlock",
                json!({"resource": "r", "client": null, "token": token(&grant)}),
            ),
            (
                "/v1/renew",
                json!({"resource": "r", "client": "a", "ttl_ms": null}),
            ),
            (
                "/v1/renew",
                json!({"resource": "r", "client": "a", "token": null, "ttl_ms": 1000}),
            ),
            ("/v1/lock", json!({"resource": "s", "ttl_ms": null})),
            ("/v1/lock", json!({"resource": "s", "request_id": null})),
        ] {
            let got = server.post_json(route, &body);
            assert_error(&got, 400, "bad-request");
            let message = got.1["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("invalid type: null"),
                "{route} {body}: {message}"
            );
        }
        assert_eq!(held(locks), ["r"]);
        let (status, anonymous) =
            server.post_json("/v1/lock", &json!({"resource": "s", "client": null}));
        assert_eq!(
            (status, &anonymous["client"]),
            (200, &Value::Null),
            "{anonymous}"
        );
        assert_eq!(held(locks), ["r", "s"]);
    }
}
