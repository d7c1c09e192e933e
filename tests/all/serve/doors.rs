//! Every door, one lock: the CLI, Locker, XML-RPC and `/v1` see the same
//! locks and the same leases.

use super::{assert_error, held, request, sleep_past, xmlrpc, xmlrpc_lock_call, Server};
use crate::support::{already, sorted_keys, Locks, GRANT_KEYS};
use serde_json::{json, Value};

#[test]
fn cli_http_xmlrpc_and_v1_see_the_same_locks() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    locks.ok(&["lock", "shared", "--client", "cli"]);
    assert_eq!(
        server.urllib(&[
            "/canhaz/shared?id=web",
            "/canhaz/shared/child",
            "/dohaz/shared"
        ]),
        [
            (200, json!({"ok": false, "lockedBy": "cli"})),
            (200, json!({"ok": false, "lockedBy": "cli"})),
            (200, json!({"lockedBy": "cli"})),
        ]
    );
    assert_eq!(
        xmlrpc(
            &server.url("/RPC2"),
            json!([["lock", "shared", "rpc"], ["unlock", "shared", "rpc"]])
        ),
        [
            json!({"fault": [1, already("cli")]}),
            json!({"fault": [1, "Resource locked by 'cli' cannot be unlocked by 'rpc'"]}),
        ]
    );
    let got = server.post_json("/v1/lock", &json!({"resource": "shared", "client": "v1"}));
    assert_error(&got, 409, "already-locked");
    assert_eq!(got.1["error"]["holder"], "cli");

    // And the other way round.
    assert_eq!(server.urllib(&["/canhaz/from-web?id=web"])[0].1["ok"], true);
    assert_eq!(
        xmlrpc(&server.url("/RPC2"), json!([["lock", "from-rpc", "rpc"]])),
        [json!({"result": true})]
    );
    let (status, _) = server.post_json("/v1/lock", &json!({"resource": "from-v1", "client": "v1"}));
    assert_eq!(status, 200);
    for (resource, holder) in [("from-web", "web"), ("from-rpc", "rpc"), ("from-v1", "v1")] {
        locks
            .run(&["lock", resource, "--client", "cli"])
            .assert_refused(1, &already(holder));
    }

    // A release by one door frees the lock for every other.
    locks.ok(&["unlock", "shared", "--client", "cli"]);
    assert_eq!(
        server.get_json("/dohaz/shared"),
        (200, json!({"lockedBy": null}))
    );
    assert_eq!(
        xmlrpc(
            &server.url("/RPC2"),
            json!([["unlock", "from-v1", "v1"], ["lock", "shared", "rpc"]])
        ),
        [json!({"result": true}), json!({"result": true})]
    );
    assert_eq!(
        server.get_json("/dohaz/shared"),
        (200, json!({"lockedBy": "rpc"}))
    );
    assert_eq!(held(&locks), ["from-rpc", "from-web", "shared"]);
}

#[test]
fn default_ttl_leases_xmlrpc_and_locker_grants_and_the_wire_stays_the_same() {
    let locks = Locks::new();
    let plain = Server::start(&locks, &[]);
    let call = |server: &Server, resource: &str| {
        let raw = request(
            "POST",
            "/RPC2",
            &[],
            Some(&xmlrpc_lock_call(resource, "rpc")),
        );
        let got = server.send(&raw);
        (got.status, got.headers, got.body)
    };
    let unleased = call(&plain, "plain");
    drop(plain);
    assert_eq!(
        locks.json(&["status", "plain", "--json"])["ttl_ms"],
        Value::Null
    );

    let server = Server::start(&locks, &["--default-ttl", "300ms"]);
    let leased = call(&server, "leased");
    assert_eq!(leased, unleased, "the same bytes, lease or not");
    let shown = locks.json(&["status", "leased", "--json"]);
    let since = shown["since_ms"].as_u64();
    if let Some(since) = since {
        assert_eq!(
            (&shown["ttl_ms"], &shown["expires_ms"]),
            (&json!(300), &json!(since + 300))
        );
    }
    // Locker without ttl= gets the default lease too; /v1 chooses its own.
    let (status, locker) = server.get_json("/canhaz/by-locker?id=web");
    assert_eq!((status, &locker["ok"]), (200, &json!(true)), "{locker}");
    let (status, v1) = server.post_json("/v1/lock", &json!({"resource": "by-v1", "client": "v1"}));
    assert_eq!(status, 200, "{v1}");
    assert_eq!(sorted_keys(&v1), GRANT_KEYS, "no lease: {v1}");

    // Both run out.
    sleep_past(&locker["expires_ms"]);
    let last = locker["expires_ms"].as_u64().expect("expires_ms");
    sleep_past(&json!(since.map_or(last, |s| s + 300)));
    assert_eq!(held(&locks), ["by-v1", "plain"]);
    let got = xmlrpc(
        &server.url("/RPC2"),
        json!([["lock", "leased", "other"], ["unlock", "leased", "rpc"]]),
    );
    assert_eq!(got[0], json!({"result": true}), "{got:?}");
    // The lost holder's unlock is a refusal (fault 1) saying why.
    assert_eq!(got[1]["fault"][0], 1, "{got:?}");
    let message = got[1]["fault"][1].as_str().unwrap_or_default();
    assert!(message.starts_with("Lease expired"), "{got:?}");
    assert_eq!(locks.json(&["status", "leased", "--json"])["fencing"], 2);
}
