//! The kernel command line: `tests=<name>[,<name>...]` and `<test>.<param>=<value>` tokens,
//! separated by whitespace. Checking names against the test registry is the runner's job.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A parsed command line.
#[derive(Debug, Default)]
pub struct Cmdline<'a> {
    /// `tests=` if given (in order, duplicates kept).
    pub tests: Option<Vec<&'a str>>,
    /// `(test, param, value)` from `test.param=value` tokens.
    pub params: Vec<(&'a str, &'a str, &'a str)>,
    /// One message per token that is not understood.
    pub errors: Vec<String>,
}

/// Parses `line`.
pub fn parse(line: &str) -> Cmdline<'_> {
    let mut out = Cmdline::default();
    for token in line.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            out.errors.push(format!("unknown option '{token}'"));
            continue;
        };
        if key == "tests" {
            let list: Vec<&str> = value.split(',').filter(|s| !s.is_empty()).collect();
            if out.tests.is_some() {
                out.errors
                    .push(format!("option 'tests=' given twice ('{token}')"));
            } else if list.is_empty() {
                out.errors.push(format!("option '{token}' names no test"));
            } else {
                out.tests = Some(list);
            }
        } else if let Some((test, param)) = key
            .split_once('.')
            .filter(|(t, p)| !t.is_empty() && !p.is_empty())
        {
            out.params.push((test, param, value));
        } else {
            out.errors.push(format!("unknown option '{token}'"));
        }
    }
    out
}

/// Parses a decimal number, or says which parameter had which bad value.
pub fn parse_u64(test: &str, param: &str, value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .map_err(|_| format!("{test}.{param}='{value}' is not a decimal number"))
}
