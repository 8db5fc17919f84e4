//! A job's results as files (NDJSON as the service streams it, or CSV with one row per
//! image), `batchlens status`, `batchlens results`, and the closing summary line.

use std::io::Write;
use std::path::Path;

use futures::StreamExt;
use serde_json::Value;

use super::events::describe;
use super::{Api, CliError, ResultsArgs, StatusArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultFormat {
    Ndjson,
    Csv,
}

impl ResultFormat {
    /// CSV for a `.csv` file, else NDJSON.
    pub fn for_path(path: &Path) -> ResultFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => ResultFormat::Csv,
            _ => ResultFormat::Ndjson,
        }
    }
}

/// `batchlens status <JOB>`.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let api = Api::new(&args.conn)?;
    let job = api.get_json(&format!("/v1/jobs/{}", args.job)).await?;
    let name = job["name"]
        .as_str()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    println!(
        "job {}{name}: {} · {} · {}",
        job["id"].as_str().unwrap_or(&args.job),
        job["status"].as_str().unwrap_or("?"),
        job["mode"].as_str().unwrap_or("?"),
        describe(&job["progress"])
    );
    Ok(())
}

/// `batchlens results <JOB>`.
pub async fn run(args: ResultsArgs) -> Result<(), CliError> {
    let api = Api::new(&args.conn)?;
    let format = args
        .format
        .or_else(|| args.out.as_deref().map(ResultFormat::for_path))
        .unwrap_or(ResultFormat::Ndjson);
    match &args.out {
        Some(path) => {
            let rows = save(&api, &args.job, path, format).await?;
            eprintln!("{rows} results written to {}", path.display());
        }
        None => {
            let stdout = std::io::stdout();
            write_results(&api, &args.job, format, &mut stdout.lock()).await?;
        }
    }
    Ok(())
}

/// Writes every result of the job to `path`; answers the number of rows.
pub async fn save(
    api: &Api,
    job: &str,
    path: &Path,
    format: ResultFormat,
) -> Result<usize, CliError> {
    let file = std::fs::File::create(path).map_err(|e| CliError::io(path.display(), e))?;
    let mut out = std::io::BufWriter::new(file);
    let rows = write_results(api, job, format, &mut out).await?;
    out.flush().map_err(|e| CliError::io(path.display(), e))?;
    Ok(rows)
}

async fn write_results(
    api: &Api,
    job: &str,
    format: ResultFormat,
    out: &mut impl Write,
) -> Result<usize, CliError> {
    let path = format!("/v1/jobs/{job}/results");
    let resp = api
        .send(&path, |_| async {
            Ok(api
                .request(reqwest::Method::GET, &path)
                .header("accept", "application/x-ndjson"))
        })
        .await?;
    let write_err = |e| CliError::io("writing the results", e);
    let mut stream = resp.bytes_stream();
    let mut pending = Vec::new();
    let mut rows = Vec::new();
    let mut count = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CliError::Http(format!("reading the results: {e}")))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            count += 1;
            match format {
                ResultFormat::Ndjson => out.write_all(&line).map_err(write_err)?,
                ResultFormat::Csv => rows.push(parse_line(&line)?),
            }
        }
    }
    if !pending.iter().all(u8::is_ascii_whitespace) {
        count += 1;
        match format {
            ResultFormat::Ndjson => {
                out.write_all(&pending).map_err(write_err)?;
                out.write_all(b"\n").map_err(write_err)?;
            }
            ResultFormat::Csv => rows.push(parse_line(&pending)?),
        }
    }
    if format == ResultFormat::Csv {
        write_csv(&rows, out).map_err(write_err)?;
    }
    Ok(count)
}

fn parse_line(line: &[u8]) -> Result<Value, CliError> {
    serde_json::from_slice(line).map_err(|e| CliError::Http(format!("a results line: {e}")))
}

const LEADING: [&str; 3] = ["custom_id", "post_id", "status"];
const TRAILING: [&str; 4] = ["input_tokens", "output_tokens", "cost_usd", "error"];

/// Results as CSV: `custom_id, post_id, status`, then every top-level field of the outputs
/// (in the order first seen, each output's keys as serde_json orders them; non-scalars JSON-encoded; a name taken by a fixed column gets
/// an `output_` prefix), then `input_tokens, output_tokens, cost_usd, error`.
pub fn write_csv(results: &[Value], out: &mut impl Write) -> std::io::Result<()> {
    let mut fields: Vec<String> = Vec::new();
    for result in results {
        if let Some(output) = result["output"].as_object() {
            for key in output.keys() {
                if !fields.contains(key) {
                    fields.push(key.clone());
                }
            }
        }
    }
    let header = LEADING
        .iter()
        .map(|s| s.to_string())
        .chain(fields.iter().map(|f| {
            if LEADING.contains(&f.as_str()) || TRAILING.contains(&f.as_str()) {
                format!("output_{f}")
            } else {
                f.clone()
            }
        }))
        .chain(TRAILING.iter().map(|s| s.to_string()));
    write_row(out, header)?;
    for r in results {
        let error = match &r["error"] {
            Value::Object(e) => match (e.get("code"), e.get("message")) {
                (Some(code), Some(msg)) => format!("{}: {}", cell(code), cell(msg)),
                _ => cell(&r["error"]),
            },
            other => cell(other),
        };
        let row = LEADING
            .iter()
            .map(|k| cell(&r[*k]))
            .chain(fields.iter().map(|f| cell(&r["output"][f])))
            .chain([
                cell(&r["usage"]["input_tokens"]),
                cell(&r["usage"]["output_tokens"]),
                cell(&r["cost_usd"]),
                error,
            ]);
        write_row(out, row)?;
    }
    Ok(())
}

/// A JSON value as one CSV cell: strings bare, null empty, others as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write_row(out: &mut impl Write, cells: impl Iterator<Item = String>) -> std::io::Result<()> {
    let mut line = String::new();
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            line.push(',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&cell.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&cell);
        }
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())
}

/// USD with enough digits for a fraction of a cent.
pub fn usd(value: f64) -> String {
    if value != 0.0 && value.abs() < 0.01 {
        format!("${value:.6}")
    } else {
        format!("${value:.4}")
    }
}

/// The closing line, as the old pipeline's: images, succeeded, failed, cost, what
/// individual calls would have cost, savings.
pub fn summary(job: &Value, cost: &Value) -> String {
    let n = |k: &str| job["progress"][k].as_u64().unwrap_or(0);
    let f = |k: &str| cost[k].as_f64().unwrap_or(0.0);
    let mut line = format!(
        "{} images: {} succeeded, {} failed",
        n("total"),
        n("succeeded"),
        n("failed")
    );
    for key in ["rejected", "cancelled", "reused"] {
        if n(key) > 0 {
            line.push_str(&format!(", {} {key}", n(key)));
        }
    }
    line.push_str(&format!(
        " · cost {} · individual calls would have cost {} · saved {} ({:.1}%)",
        usd(f("actual_usd")),
        usd(f("individual_usd")),
        usd(f("savings_usd")),
        f("savings_percent")
    ));
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_has_one_row_per_image_with_the_output_fields_as_columns() {
        let results = vec![
            json!({"custom_id": "p1/a", "post_id": "p1", "status": "succeeded",
                   "output": {"category": "dress", "colors": ["red", "blue"], "status": "new",
                              "note": "a \"fine\", long\nline"},
                   "usage": {"input_tokens": 2900, "output_tokens": 61}, "cost_usd": 0.000236,
                   "error": null}),
            json!({"custom_id": "b", "post_id": null, "status": "failed", "output": null,
                   "usage": null, "cost_usd": null,
                   "error": {"code": "invalid_output", "message": "not JSON"}}),
            json!({"custom_id": "p2/c", "post_id": "p2", "status": "succeeded",
                   "output": {"category": "coat", "formal": true},
                   "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": 0.0}),
        ];
        let mut out = Vec::new();
        write_csv(&results, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "custom_id,post_id,status,category,colors,note,output_status,formal,\
             input_tokens,output_tokens,cost_usd,error"
        );
        assert_eq!(
            lines[1],
            "p1/a,p1,succeeded,dress,\"[\"\"red\"\",\"\"blue\"\"]\",\
             \"a \"\"fine\"\", long\nline\",new,,2900,61,0.000236,"
        );
        assert_eq!(lines[2], "b,,failed,,,,,,,,,invalid_output: not JSON");
        assert_eq!(lines[3], "p2/c,p2,succeeded,coat,,,,true,10,5,0.0,");
        assert_eq!(lines[4], "", "ends with a line break");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn the_summary_line_says_what_it_cost_and_saved() {
        let job = json!({"progress": {"total": 300, "succeeded": 297, "failed": 2, "rejected": 1}});
        let cost = json!({"actual_usd": 0.0123, "individual_usd": 0.0246, "savings_usd": 0.0123,
                          "savings_percent": 50.0});
        assert_eq!(
            summary(&job, &cost),
            "300 images: 297 succeeded, 2 failed, 1 rejected · cost $0.0123 · \
             individual calls would have cost $0.0246 · saved $0.0123 (50.0%)"
        );
        assert_eq!(usd(0.000236), "$0.000236");
        assert_eq!(usd(0.0), "$0.0000");
    }

    #[test]
    fn the_format_follows_the_file_extension() {
        assert_eq!(
            ResultFormat::for_path(Path::new("r.CSV")),
            ResultFormat::Csv
        );
        assert_eq!(
            ResultFormat::for_path(Path::new("r.ndjson")),
            ResultFormat::Ndjson
        );
        assert_eq!(ResultFormat::for_path(Path::new("r")), ResultFormat::Ndjson);
    }
}
