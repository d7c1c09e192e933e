//! Black-box tests of hasp: the real `hasp` binary, real directories, real
//! processes. One test binary, one module per area.

mod support;

mod cli;
