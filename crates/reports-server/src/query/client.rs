//! `reports-server query`: the query API from the command line.
//!
//! It lists `findings` or `findingcounts` page by page (never the whole answer in memory) and
//! prints each page as it arrives: aligned columns (one table per page, as kubectl prints
//! chunks), one JSON array, or CSV with a header. Through kube-apiserver it uses the kubeconfig
//! like kubectl, so the caller's own RBAC decides what it sees.

use std::io::Write;

use anyhow::Context as _;
use reports_core::findings::render::{GROUP, STANDARD_RESULTS, VERSION};
use serde_json::Value;

use crate::cli::query::{Output, QueryArgs, Question};

/// The columns of a findings row: header and the JSON pointer of the value.
const FINDING_COLUMNS: [(&str, &str); 17] = [
    ("namespace", "/metadata/namespace"),
    ("report_kind", "/report/kind"),
    ("report", "/report/name"),
    ("policy", "/policy"),
    ("rule", "/rule"),
    ("result", "/result"),
    ("severity", "/severity"),
    ("score", "/properties/score"),
    ("category", "/category"),
    ("source", "/source"),
    ("resource_api_version", "/resource/apiVersion"),
    ("resource_kind", "/resource/kind"),
    ("resource_namespace", "/resource/namespace"),
    ("resource_name", "/resource/name"),
    ("resource_uid", "/resource/uid"),
    ("timestamp", "/timestamp"),
    ("message", "/message"),
];

/// The findings columns a table shows (indexes into [`FINDING_COLUMNS`]).
const FINDING_TABLE: [usize; 10] = [0, 2, 3, 4, 5, 6, 7, 11, 13, 9];

/// Builds the client: straight to `--server`, or the kubeconfig's cluster.
async fn client(args: &QueryArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.server {
        Some(server) => {
            let mut config = kube::Config::new(server.parse().context("--server is not a URL")?);
            config.accept_invalid_certs = args.insecure_skip_tls_verify;
            config.auth_info.token = args.token.clone().map(Into::into);
            config
        }
        None => match &args.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).context("reading the kubeconfig")?;
                kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
            }
            None => kube::Config::infer().await.context("no kubeconfig and not in a pod: give --server")?,
        },
    };
    Ok(kube::Client::try_from(config)?)
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A value of an object as text ("" when absent).
fn cell(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A CSV field, quoted when it needs to be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Prints rows as aligned columns.
fn print_table(out: &mut impl Write, header: &[String], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

/// Runs the question and prints the answer to `out`.
pub async fn run(args: &QueryArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let client = client(args).await?;
    let (resource, mut selector) = match &args.question {
        Question::Findings => ("findings", args.filter.clone()),
        Question::Counts { by } => {
            let group = format!("groupBy in ({by})");
            let selector = if args.filter.is_empty() { group } else { format!("{},{group}", args.filter) };
            ("findingcounts", selector)
        }
    };
    selector = encode(&selector);
    let scope = args.namespace.as_ref().map(|ns| format!("namespaces/{}/", encode(ns))).unwrap_or_default();
    let (header, pointers): (Vec<String>, Vec<String>) = match &args.question {
        Question::Findings => {
            let columns: Vec<usize> = match args.output {
                Output::Table => FINDING_TABLE.to_vec(),
                _ => (0..FINDING_COLUMNS.len()).collect(),
            };
            columns
                .iter()
                .map(|&i| (FINDING_COLUMNS[i].0.to_string(), FINDING_COLUMNS[i].1.to_string()))
                .unzip()
        }
        Question::Counts { by } => by
            .split(',')
            .map(|f| f.trim().to_string())
            .map(|f| (f.clone(), format!("/group/{}", f.replace('~', "~0").replace('/', "~1"))))
            .chain(std::iter::once(("total".to_string(), "/total".to_string())))
            .chain(STANDARD_RESULTS.iter().map(|r| (r.to_string(), format!("/results/{r}"))))
            .unzip(),
    };
    let header: Vec<String> = match args.output {
        Output::Table => header.iter().map(|h| h.to_uppercase()).collect(),
        _ => header,
    };
    match args.output {
        Output::Json => write!(out, "[")?,
        Output::Csv => {
            writeln!(out, "{}", header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?
        }
        Output::Table => {}
    }
    let (mut token, mut printed) = (String::new(), 0u64);
    loop {
        let mut limit = args.chunk_size.max(1);
        if args.max_items > 0 {
            limit = limit.min(args.max_items - printed);
        }
        let mut uri =
            format!("/apis/{GROUP}/{VERSION}/{scope}{resource}?limit={limit}&fieldSelector={selector}");
        if !token.is_empty() {
            uri.push_str(&format!("&continue={}", encode(&token)));
        }
        let request = http::Request::get(uri).body(Vec::new())?;
        let page: Value = client.request(request).await.map_err(|e| match e {
            kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
            other => anyhow::Error::new(other),
        })?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> =
            items.iter().map(|item| pointers.iter().map(|p| cell(item, p)).collect()).collect();
        match args.output {
            Output::Table if !rows.is_empty() || printed == 0 => print_table(out, &header, &rows)?,
            Output::Table => {}
            Output::Csv => {
                for row in &rows {
                    writeln!(out, "{}", row.iter().map(|v| csv_field(v)).collect::<Vec<_>>().join(","))?;
                }
            }
            Output::Json => {
                for (i, item) in items.iter().enumerate() {
                    let separator = if printed == 0 && i == 0 { "\n" } else { ",\n" };
                    write!(out, "{separator}{item}")?;
                }
            }
        }
        printed += items.len() as u64;
        token = page["metadata"]["continue"].as_str().unwrap_or_default().to_string();
        if token.is_empty() || (args.max_items > 0 && printed >= args.max_items) {
            break;
        }
    }
    if args.output == Output::Json {
        writeln!(out, "\n]")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\nnow"), "\"say \"\"hi\"\"\nnow\"");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("properties.score>=8,severity in (a,b)"),
            "properties.score%3E%3D8%2Cseverity%20in%20%28a%2Cb%29"
        );
    }
}
