//! Host bindings of the `hasp:lock` WIT package (world `guest`).

wasmtime::component::bindgen!({
    world: "guest",
    path: "../wit",
});

pub use self::hasp::lock::types;
