//! gocept.lockd's XML-RPC door (`POST /RPC2` and `/`), through Python's
//! `xmlrpc.client`; on both stores (`both!`).

use super::{healthy, held, python, xmlrpc, Server};
use crate::support::{already, both};
use serde_json::json;

/// POSTs argv[2] to argv[1] with urllib and parses the answer with
/// xmlrpc.client.loads; prints {"status", "result"|"fault"}.
const XMLRPC_RAW: &str = r#"
import json, sys, urllib.error, urllib.request, xmlrpc.client
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),
                             headers={"Content-Type": "text/xml"})
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
    sys.exit(0)
try:
    params, method = xmlrpc.client.loads(body)
    print(json.dumps({"status": status, "result": list(params)}))
except xmlrpc.client.Fault as f:
    print(json.dumps({"status": status, "fault": [f.faultCode, f.faultString]}))
"#;

both! {
    fn gocept_lockd_session_through_xmlrpc_client_on_rpc2_and_root(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let session = json!([
            ["lock", "resource1", "client1"],
            ["lock", "resource1", "client2"],
            ["lock", "resource2", "client2"],
            ["unlock", "resource1", "client2"],
            ["unlock", "resource1", "client1"],
            ["unlock", "resource1", "client1"],
            ["unlock", "resource2", "client2"],
        ]);
        let expected = [
            json!({"result": true}),
            json!({"fault": [1, "Resource already locked by 'client1'"]}),
            json!({"result": true}),
            json!({"fault": [1, "Resource locked by 'client1' cannot be unlocked by 'client2'"]}),
            json!({"result": true}),
            json!({"fault": [1, "Resource not locked"]}),
            json!({"result": true}),
        ];
        for path in ["/RPC2", "/"] {
            assert_eq!(
                xmlrpc(&server.url(path), session.clone()),
                expected,
                "{path}"
            );
            assert_eq!(held(locks), Vec::<String>::new(), "{path}");
        }
        // The locks are the CLI's locks, under the same names.
        assert_eq!(
            xmlrpc(
                &server.url("/RPC2"),
                json!([["lock", "resource1", "client1"]])
            ),
            [json!({"result": true})]
        );
        locks
            .run(&["lock", "resource1", "--client", "client2"])
            .assert_refused(1, &already("client1"));
    }
}

both! {
    fn xmlrpc_errors_are_faults_not_dropped_connections(locks: &Locks) {
        let server = Server::start(locks, &[]);
        let got = xmlrpc(
            &server.url("/RPC2"),
            json!([
                ["system.listMethods"],
                ["no_such_method", "a", "b"],
                ["lock", "only-a-resource"],
                ["lock", "r", "c", "extra"],
                ["unlock"],
            ]),
        );
        let methods = got[0]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{got:?}"));
        for name in ["lock", "unlock"] {
            assert!(methods.contains(&json!(name)), "{name} not in {got:?}");
        }
        assert_eq!(got[1]["fault"][0], -32601, "{got:?}");
        for bad_params in &got[2..] {
            assert_eq!(bad_params["fault"][0], -32602, "{got:?}");
        }

        // Malformed XML, parsed by xmlrpc.client.loads: a methodResponse with
        // a fault, in an HTTP 200.
        for (path, body) in [
            (
                "/RPC2",
                "<?xml version='1.0'?><methodCall><methodName>lock</methodName><params>",
            ),
            ("/", "this is not XML"),
            ("/RPC2", ""),
        ] {
            let got = python(XMLRPC_RAW, &[&server.url(path), body]);
            assert_eq!(
                (&got["status"], &got["fault"][0]),
                (&json!(200), &json!(-32700)),
                "{path} {body:?}: {got}"
            );
        }
        healthy(&server);
        assert_eq!(held(locks), Vec::<String>::new());
    }
}
