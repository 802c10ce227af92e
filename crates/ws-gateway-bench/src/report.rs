//! The results: a readable table on stdout and one JSON line for scripts.

use serde_json::{Map, Value};

#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<(String, Value, String)>,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    /// Adds a measure: a JSON key, its value and the unit shown in the table.
    pub fn add(&mut self, key: &str, value: impl Into<Value>, unit: &str) -> &mut Report {
        self.rows
            .push((key.to_owned(), value.into(), unit.to_owned()));
        self
    }

    pub fn print(&self, mode: &str, target: &str) {
        println!("== ws-gateway-bench {mode} ({target}) ==");
        let width = self.rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        for (key, value, unit) in &self.rows {
            let shown = match value {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            println!("{key:<width$}  {shown:>14} {unit}");
        }
        let mut json = Map::new();
        json.insert("mode".to_owned(), mode.into());
        json.insert("target".to_owned(), target.into());
        for (key, value, _) in &self.rows {
            json.insert(key.clone(), value.clone());
        }
        println!("{}", Value::Object(json));
    }
}
