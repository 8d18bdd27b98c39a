//! An upload as the collector reads it: `RunResult::from_json` (version, privacy scan, types, values); an accepted result re-serializes to a result that is accepted again, unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope_analysis::result::RunResult;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(result) = RunResult::from_json(text) {
        let stored = result.to_json();
        let again = RunResult::from_json(&stored).expect("a stored result reads back");
        assert_eq!(again.to_json(), stored);
    }
});
