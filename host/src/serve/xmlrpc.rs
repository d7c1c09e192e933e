//! gocept.lockd's door: XML-RPC `lock(resource, client)` and
//! `unlock(resource, client)`. Success is `True` (a default
//! `xmlrpc.client.ServerProxy` cannot read `None`); every refusal is a Fault
//! whose faultString is gocept.lockd's exact message. The wire stays
//! gocept.lockd's; `hasp serve --default-ttl` may give its grants a lease.

use super::http::Response;
use super::locks::Locks;
use crate::{Error, LockOptions, UnlockKey};
use quick_xml::events::Event;
use quick_xml::Reader;

/// faultCode of a refusal by the lock rules.
const REFUSED: i32 = 1;
/// faultCode of bad input (a resource or client name the rules reject).
const INVALID: i32 = 2;
/// faultCode of a failure of the server or its storage.
const FAILED: i32 = 3;
const PARSE_ERROR: i32 = -32700;
const NO_SUCH_METHOD: i32 = -32601;
const BAD_PARAMS: i32 = -32602;

/// Answers one XML-RPC call.
pub(super) async fn handle(locks: &Locks, body: &[u8]) -> Response {
    let (method, params) = match parse_call(body) {
        Ok(call) => call,
        Err(why) => return fault(PARSE_ERROR, &format!("parse error: {why}")),
    };
    match method.as_str() {
        "lock" | "unlock" => {
            let [Param::Str(resource), Param::Str(client)] = params.as_slice() else {
                return fault(
                    BAD_PARAMS,
                    &format!("{method}(resource, client) takes two strings"),
                );
            };
            let (resource, client) = (resource.clone(), client.clone());
            let outcome = if method == "lock" {
                let options = LockOptions {
                    ttl: locks.default_ttl,
                    ..LockOptions::client(client)
                };
                locks.lock(resource, options).await.map(Some)
            } else {
                locks
                    .unlock(resource, UnlockKey::Client(client))
                    .await
                    .map(|_| None)
            };
            match outcome {
                Ok(None) => success("<boolean>1</boolean>"),
                Ok(Some(grant)) => success("<boolean>1</boolean>").handing(grant),
                Err(err) => {
                    let code = match &err {
                        e if e.is_refusal() => REFUSED,
                        Error::InvalidInput { .. } => INVALID,
                        _ => FAILED,
                    };
                    fault(code, &err.to_string())
                }
            }
        }
        "system.listMethods" => success(
            "<array><data><value><string>lock</string></value><value><string>unlock</string></value>\
             <value><string>system.listMethods</string></value></data></array>",
        ),
        other => fault(NO_SUCH_METHOD, &format!("no such method: {other}")),
    }
}

/// A call parameter: a string, or something else (named by its type).
#[derive(Debug, PartialEq)]
enum Param {
    Str(String),
    Other,
}

/// The elements of a `<methodCall>` that matter; any other is `Other`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tag {
    MethodCall,
    MethodName,
    Params,
    Param,
    Value,
    String,
    Other,
}

impl Tag {
    fn of(name: &[u8]) -> Tag {
        match name {
            b"methodCall" => Tag::MethodCall,
            b"methodName" => Tag::MethodName,
            b"params" => Tag::Params,
            b"param" => Tag::Param,
            b"value" => Tag::Value,
            b"string" => Tag::String,
            _ => Tag::Other,
        }
    }
}

/// Where the reader is in a `<methodCall>`.
#[derive(PartialEq)]
enum Place {
    /// `methodCall`
    Call,
    /// `methodCall/methodName`
    MethodName,
    /// `methodCall/params/param`
    Param,
    /// `methodCall/params/param/value`
    Value,
    /// `methodCall/params/param/value/string`
    Typed,
    Elsewhere,
}

fn place(path: &[Tag]) -> Place {
    use Tag::*;
    match path {
        [MethodCall] => Place::Call,
        [MethodCall, MethodName] => Place::MethodName,
        [MethodCall, Params, Param] => Place::Param,
        [MethodCall, Params, Param, Value] => Place::Value,
        [MethodCall, Params, Param, Value, String] => Place::Typed,
        _ => Place::Elsewhere,
    }
}

/// The parameter being read: text directly in `<value>`, text in its
/// `<string>`, and its first child element, if any.
#[derive(Default)]
struct Value {
    bare: String,
    typed: String,
    child: Option<Tag>,
}

impl Value {
    fn finish(self) -> Param {
        match self.child {
            None => Param::Str(self.bare),
            Some(Tag::String) => Param::Str(self.typed),
            Some(_) => Param::Other,
        }
    }
}

/// Reads `<methodCall>`: the method name and its top-level parameters.
/// Text is kept only where it is part of the call; element names are
/// never copied.
fn parse_call(body: &[u8]) -> Result<(String, Vec<Param>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let mut reader = Reader::from_str(text);
    let mut path: Vec<Tag> = Vec::with_capacity(8);
    let mut method: Option<String> = None;
    let mut name_text = String::new();
    let mut params = Vec::new();
    let mut value = Value::default();
    let mut saw_root = false;
    loop {
        let event = reader.read_event().map_err(|e| e.to_string())?;
        let (opened, closes) = match &event {
            Event::Start(e) => (Some(e.name()), false),
            Event::Empty(e) => (Some(e.name()), true),
            _ => (None, false),
        };
        if let Some(name) = opened {
            let tag = Tag::of(name.as_ref());
            if path.is_empty() {
                if tag != Tag::MethodCall || saw_root {
                    let name = String::from_utf8_lossy(name.as_ref());
                    return Err(format!("expected one <methodCall>, found <{name}>"));
                }
                saw_root = true;
            }
            match place(&path) {
                Place::Param if tag == Tag::Value => value = Value::default(),
                Place::Value => {
                    value.child.get_or_insert(tag);
                }
                _ => {}
            }
            path.push(tag);
            if !closes {
                continue;
            }
        }
        // Where text found here would go, if anywhere.
        let into = match place(&path) {
            Place::MethodName => Some(&mut name_text),
            Place::Value => Some(&mut value.bare),
            Place::Typed => Some(&mut value.typed),
            _ => None,
        };
        match event {
            Event::Start(_) => {}
            Event::Empty(_) | Event::End(_) => {
                let tag = path.pop().unwrap_or(Tag::Other);
                match place(&path) {
                    Place::Call if tag == Tag::MethodName => {
                        method = Some(std::mem::take(&mut name_text).trim().to_string())
                    }
                    Place::Param if tag == Tag::Value => {
                        params.push(std::mem::take(&mut value).finish())
                    }
                    _ => {}
                }
            }
            Event::Text(e) => {
                if let Some(into) = into {
                    into.push_str(&e.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::CData(e) => {
                if let Some(into) = into {
                    into.push_str(&e.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::GeneralRef(e) => {
                // Resolved even where it is not kept: an unknown entity is
                // an error anywhere.
                match e.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => {
                        if let Some(into) = into {
                            into.push(c);
                        }
                    }
                    None => {
                        let name = e.decode().map_err(|e| e.to_string())?;
                        let text = quick_xml::escape::resolve_xml_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?;
                        if let Some(into) = into {
                            into.push_str(text);
                        }
                    }
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !path.is_empty() || !saw_root {
        return Err("the document is incomplete".into());
    }
    let method = method.ok_or("no <methodName>")?;
    Ok((method, params))
}

fn success(value: &str) -> Response {
    xml(format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><params><param><value>{value}</value></param></params></methodResponse>\n"
    ))
}

fn fault(code: i32, message: &str) -> Response {
    xml(format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><fault><value><struct>\
         <member><name>faultCode</name><value><int>{code}</int></value></member>\
         <member><name>faultString</name><value><string>{}</string></value></member>\
         </struct></value></fault></methodResponse>\n",
        escape(message)
    ))
}

fn xml(body: String) -> Response {
    Response::text(200, "text/xml", body)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_typed_and_bare() {
        let call = b"<?xml version='1.0'?><methodCall><methodName>lock</methodName><params>\
            <param><value><string>a &amp; b&#33;</string></value></param>\
            <param><value>bare</value></param><param><value><int>3</int></value></param>\
            </params></methodCall>";
        let (method, params) = parse_call(call).expect("parses");
        assert_eq!(method, "lock");
        assert_eq!(
            params,
            vec![
                Param::Str("a & b!".into()),
                Param::Str("bare".into()),
                Param::Other
            ]
        );
    }

    #[test]
    fn reads_empty_and_cdata_values_and_ignores_what_is_not_the_call() {
        let call = b"<?xml version='1.0'?>\n<methodCall>\n<!-- note -->\n\
            <methodName> unlock </methodName>\n<params>\n\
            <param><value><string/></value></param>\n\
            <param><value><string><![CDATA[a<b]]></string></value></param>\n\
            <param><value/></param>\n\
            <param><value><array><data><value><string>x</string></value></data></array></value></param>\n\
            </params>\n</methodCall>\n";
        let (method, params) = parse_call(call).expect("parses");
        assert_eq!(method, "unlock");
        assert_eq!(
            params,
            vec![
                Param::Str(String::new()),
                Param::Str("a<b".into()),
                Param::Str(String::new()),
                Param::Other
            ]
        );
        let err = parse_call(b"<methodResponse/>").expect_err("not a call");
        assert_eq!(err, "expected one <methodCall>, found <methodResponse>");
        assert!(parse_call(b"<methodCall><methodName>x&bogus;</methodName></methodCall>").is_err());
    }

    #[test]
    fn refuses_what_is_not_a_call() {
        assert!(parse_call(b"<methodCall><methodName>x</methodName>").is_err());
        assert!(parse_call(b"not xml").is_err());
        assert!(parse_call(b"<other/>").is_err());
    }

    mod properties {
        //! The XML-RPC reader over arbitrary input: it never panics, and a
        //! call of two strings, escaped as any client escapes them, reads
        //! back as sent.

        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_call_never_panics(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
                let _ = parse_call(&body);
            }

            #[test]
            fn any_two_strings_read_back(
                method in "[a-zA-Z_.]{1,16}",
                first in "[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]{0,40}",
                second in "[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]{0,40}",
            ) {
                let call = format!(
                    "<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>\
                     <param><value><string>{}</string></value></param>\
                     <param><value><string>{}</string></value></param></params></methodCall>",
                    escape(&first),
                    escape(&second)
                );
                let (name, params) = parse_call(call.as_bytes()).expect("a valid call");
                prop_assert_eq!(name, method);
                prop_assert_eq!(params, vec![Param::Str(first), Param::Str(second)]);
            }
        }
    }
}
