//! A log sink for the build functions that collects every line, cheap to clone into the
//! callback.

use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn sink(&self) -> impl FnMut(String) + Send + 'static {
        let lines = self.0.clone();
        move |line| lines.lock().unwrap().push(line)
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// The `#N` of the first step whose header line contains `needle`.
    pub fn step_number(&self, needle: &str) -> Option<String> {
        self.lines().iter().find_map(|l| {
            let (number, rest) = l.split_once(' ')?;
            (number.starts_with('#') && rest.contains(needle)).then(|| number.to_string())
        })
    }
}
