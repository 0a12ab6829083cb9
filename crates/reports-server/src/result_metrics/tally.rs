//! The counts behind the result gauges: interned label values, series with counts, and what
//! each report contributed (see the module notes of [`super`]).

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    fmt::Write as _,
    sync::Arc,
};

use super::labels::{Row, LABELS, NAMES, NAMESPACE, SIMPLE};

/// A series' label values, as interned ids (0 is the empty string).
type Key = [u32; LABELS];

/// Identifies a report: its resource's index in [`super::labels::RESOURCES`], and its
/// namespace and name as interned ids.
type ReportKey = (u8, u32, u32);

/// Label values, each held once, counted by the series and report keys that use them, so that
/// values nobody uses any more are freed (report names come and go).
#[derive(Default)]
struct Interner {
    /// Text to id.
    ids: HashMap<Arc<str>, u32>,
    /// Id to text and users; id 0 is the empty string, never freed.
    values: Vec<(Arc<str>, u32)>,
    /// Ids free for reuse.
    free: Vec<u32>,
}

impl Interner {
    fn new() -> Self {
        let empty: Arc<str> = Arc::from("");
        Self { ids: HashMap::new(), values: vec![(empty, 0)], free: Vec::new() }
    }

    /// The id of `text`, if interned.
    fn get(&self, text: &str) -> Option<u32> {
        if text.is_empty() {
            return Some(0);
        }
        self.ids.get(text).copied()
    }

    /// The id of `text`, with one more user.
    fn acquire(&mut self, text: &str) -> u32 {
        if text.is_empty() {
            return 0;
        }
        let id = match self.ids.get(text) {
            Some(id) => *id,
            None => {
                let text: Arc<str> = Arc::from(text);
                let id = match self.free.pop() {
                    Some(id) => {
                        self.values[id as usize] = (text.clone(), 0);
                        id
                    }
                    None => {
                        self.values.push((text.clone(), 0));
                        (self.values.len() - 1) as u32
                    }
                };
                self.ids.insert(text, id);
                id
            }
        };
        self.values[id as usize].1 += 1;
        id
    }

    /// One user fewer for `id`; the value is freed with its last user.
    fn release(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        let entry = &mut self.values[id as usize];
        entry.1 -= 1;
        if entry.1 == 0 {
            let text = std::mem::replace(&mut entry.0, Arc::from(""));
            self.ids.remove(&text);
            self.free.push(id);
        }
    }

    fn text(&self, id: u32) -> &str {
        &self.values[id as usize].0
    }

    /// Bytes held, roughly: the texts and both tables.
    fn bytes(&self) -> usize {
        let texts: usize = self.values.iter().map(|(t, _)| t.len() + 16).sum();
        texts + self.values.capacity() * 24 + self.ids.capacity() * 28
    }
}

/// One series: its label values and how many results it counts (0: a free slot).
struct Series {
    key: Key,
    count: u32,
}

/// What one report contributed: results per series, and results refused at the limit.
struct Contribution {
    series: Box<[(u32, u32)]>,
    refused: u32,
}

/// Every series and every report's contribution to them.
pub(crate) struct Tally {
    /// Keep only the `simple` labels.
    simple: bool,
    /// Most series at once (`--result-metrics-max-series`).
    max_series: usize,
    values: Interner,
    /// Series by slot; a slot with count 0 is free (in `free_series`).
    series: Vec<Series>,
    free_series: Vec<u32>,
    /// Slot of each live series.
    index: HashMap<Key, u32>,
    /// Series with a count above 0.
    live: usize,
    /// What each report contributed, so a change or a delete can take exactly that away.
    reports: HashMap<ReportKey, Contribution>,
    /// `(series, count)` pairs held by all contributions, so the memory estimate a scrape shows
    /// costs nothing per report.
    pairs: usize,
    /// Results currently not counted because their series was refused at the limit.
    pub(crate) refused_results: u64,
    /// Series refused at the limit, once per report write that needed them (never decreases).
    pub(crate) refused_series_total: u64,
}

impl Tally {
    /// An empty tally.
    pub(crate) fn new(simple: bool, max_series: usize) -> Self {
        Self {
            simple,
            max_series,
            values: Interner::new(),
            series: Vec::new(),
            free_series: Vec::new(),
            index: HashMap::new(),
            live: 0,
            reports: HashMap::new(),
            pairs: 0,
            refused_results: 0,
            refused_series_total: 0,
        }
    }

    /// Live series.
    pub(crate) fn series(&self) -> usize {
        self.live
    }

    /// Reports with a contribution.
    pub(crate) fn reports(&self) -> usize {
        self.reports.len()
    }

    /// Bytes held, roughly (for the memory gauge and the benchmark).
    pub(crate) fn bytes(&self) -> usize {
        let contributions =
            self.pairs * 8 + self.reports.capacity() * (std::mem::size_of::<ReportKey>() + 32);
        self.values.bytes()
            + self.series.capacity() * std::mem::size_of::<Series>()
            + self.index.capacity() * (std::mem::size_of::<Key>() + 8)
            + contributions
    }

    /// Replaces the contribution of the report `(resource, namespace, name)` by `rows` (none:
    /// the report is gone). The old contribution is taken away first, so a rewrite of a report
    /// at the limit keeps its own series.
    pub(crate) fn set(&mut self, resource: u8, namespace: &str, name: &str, rows: &[Row<'_>]) {
        let found = match (self.values.get(namespace), self.values.get(name)) {
            (Some(ns), Some(n)) => Some((resource, ns, n)),
            _ => None,
        };
        // Series the old contribution leaves at 0 are freed only after the new rows are placed,
        // so a rewrite that keeps them does not free and rebuild them.
        let mut emptied = Vec::new();
        if let Some(old) = found.and_then(|key| self.reports.remove(&key)) {
            for &(slot, n) in old.series.iter() {
                let series = &mut self.series[slot as usize];
                series.count -= n;
                if series.count == 0 {
                    self.live -= 1;
                    emptied.push(slot);
                }
            }
            self.refused_results -= u64::from(old.refused);
            self.pairs -= old.series.len();
            if let Some((_, ns, n)) = found {
                self.values.release(ns);
                self.values.release(n);
            }
        }
        let mut slots = Vec::with_capacity(rows.len());
        let mut refused = 0u32;
        let mut refused_keys = HashSet::new();
        for row in rows {
            match self.add(row) {
                Some(slot) => slots.push(slot),
                None => {
                    refused += 1;
                    refused_keys.insert(*row);
                }
            }
        }
        for slot in emptied {
            if self.series[slot as usize].count == 0 {
                self.free(slot);
            }
        }
        if slots.is_empty() && refused == 0 {
            return;
        }
        slots.sort_unstable();
        let mut series: Vec<(u32, u32)> = Vec::new();
        for slot in slots {
            match series.last_mut() {
                Some((last, n)) if *last == slot => *n += 1,
                _ => series.push((slot, 1)),
            }
        }
        self.refused_results += u64::from(refused);
        self.pairs += series.len();
        self.refused_series_total += refused_keys.len() as u64;
        let key = (resource, self.values.acquire(namespace), self.values.acquire(name));
        self.reports.insert(key, Contribution { series: series.into_boxed_slice(), refused });
    }

    /// Counts one result in its series, creating it unless that would pass the limit; the slot,
    /// or None when refused.
    fn add(&mut self, row: &Row<'_>) -> Option<u32> {
        let mut key: Key = [0; LABELS];
        let mut known = true;
        for (i, text) in row.iter().enumerate() {
            match self.values.get(text) {
                Some(id) => key[i] = id,
                None => known = false,
            }
        }
        if known {
            if let Some(&slot) = self.index.get(&key) {
                let series = &mut self.series[slot as usize];
                if series.count == 0 {
                    // Emptied by this same write and not freed yet: reviving it is a new series.
                    if self.live >= self.max_series {
                        return None;
                    }
                    self.live += 1;
                }
                series.count += 1;
                return Some(slot);
            }
        }
        if self.live >= self.max_series {
            return None;
        }
        for (i, text) in row.iter().enumerate() {
            key[i] = self.values.acquire(text);
        }
        let slot = match self.free_series.pop() {
            Some(slot) => {
                self.series[slot as usize] = Series { key, count: 1 };
                slot
            }
            None => {
                self.series.push(Series { key, count: 1 });
                (self.series.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        self.live += 1;
        Some(slot)
    }

    /// Frees an empty series and its label values.
    fn free(&mut self, slot: u32) {
        let key = self.series[slot as usize].key;
        if let Entry::Occupied(entry) = self.index.entry(key) {
            entry.remove();
        }
        for id in key {
            self.values.release(id);
        }
        self.free_series.push(slot);
    }

    /// Appends both gauges in Prometheus text format: `policy_report_result` for namespaced
    /// reports, `cluster_policy_report_result` for cluster ones; a series is worth 1 in the
    /// detailed mode (one per result, as Policy Reporter sets it) and its count in the simple one.
    pub(crate) fn render(&self, out: &mut String) {
        for (cluster, family, help) in [
            (false, "policy_report_result", "Results of namespaced policy reports, by their labels."),
            (true, "cluster_policy_report_result", "Results of cluster policy reports, by their labels."),
        ] {
            let _ = write!(out, "# HELP {family} {help}\n# TYPE {family} gauge\n");
            for series in self.series.iter().filter(|s| s.count > 0 && (s.key[NAMESPACE] == 0) == cluster) {
                out.push_str(family);
                let mut first = true;
                for (i, name) in NAMES.iter().enumerate() {
                    if (cluster && i == NAMESPACE) || (self.simple && !SIMPLE.contains(&i)) {
                        continue;
                    }
                    out.push(if first { '{' } else { ',' });
                    first = false;
                    out.push_str(name);
                    out.push_str("=\"");
                    escape_into(self.values.text(series.key[i]), out);
                    out.push('"');
                }
                out.push_str(if first { " " } else { "} " });
                let value = if self.simple { series.count } else { 1 };
                let _ = writeln!(out, "{value}");
            }
        }
    }
}

/// Appends a label value escaped as the text format wants: backslash, double quote and line
/// feed.
fn escape_into(value: &str, out: &mut String) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(ns: &'a str, policy: &'a str, status: &'a str) -> Row<'a> {
        let mut row = [""; LABELS];
        row[NAMESPACE] = ns;
        row[super::super::labels::POLICY] = policy;
        row[super::super::labels::STATUS] = status;
        row
    }

    fn rendered(tally: &Tally) -> Vec<String> {
        let mut out = String::new();
        tally.render(&mut out);
        out.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
    }

    #[test]
    fn contributions_are_replaced_and_taken_away_exactly() {
        let mut t = Tally::new(true, 100);
        t.set(0, "a", "r1", &[row("a", "p", "fail"), row("a", "p", "fail"), row("a", "q", "pass")]);
        t.set(0, "a", "r2", &[row("a", "p", "fail")]);
        assert_eq!(t.series(), 2);
        let p = r#"policy_report_result{category="",namespace="a",policy="p",severity="",source="",status="fail"}"#;
        assert!(rendered(&t).contains(&format!("{p} 3")), "{:?}", rendered(&t));
        t.set(0, "a", "r1", &[row("a", "p", "fail")]);
        assert!(rendered(&t).contains(&format!("{p} 2")));
        assert_eq!(t.series(), 1, "q's only result is gone");
        t.set(0, "a", "r1", &[]);
        t.set(0, "a", "r2", &[]);
        assert_eq!((t.series(), t.reports()), (0, 0));
        assert!(rendered(&t).is_empty());
        // Every label value was released: only the empty string is left.
        assert_eq!(t.values.ids.len(), 0);
        assert_eq!(t.values.free.len(), t.values.values.len() - 1);
    }

    #[test]
    fn detailed_series_are_worth_one_and_cluster_reports_have_no_namespace_label() {
        let mut t = Tally::new(false, 100);
        t.set(1, "", "c", &[row("", "p", "fail"), row("", "p", "fail")]);
        assert_eq!(
            rendered(&t),
            [
                r#"cluster_policy_report_result{category="",kind="",name="",policy="p",report="",rule="",severity="",source="",status="fail"} 1"#
            ]
        );
    }

    #[test]
    fn the_limit_refuses_new_series_counts_them_and_lets_rewrites_keep_theirs() {
        let mut t = Tally::new(true, 2);
        t.set(0, "a", "r1", &[row("a", "p", "fail"), row("a", "q", "fail")]);
        t.set(
            0,
            "a",
            "r2",
            &[row("a", "x", "fail"), row("a", "y", "fail"), row("a", "y", "fail"), row("a", "p", "fail")],
        );
        assert_eq!((t.series(), t.refused_results, t.refused_series_total), (2, 3, 2));
        // A rewrite of r1 with one new series: its old series are taken away first.
        t.set(0, "a", "r1", &[row("a", "z", "fail")]);
        assert_eq!((t.series(), t.refused_results), (2, 3));
        t.set(0, "a", "r2", &[]);
        assert_eq!((t.series(), t.refused_results, t.refused_series_total), (1, 0, 2));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Tally::new(true, 10);
        t.set(0, "a", "r", &[row("a", "say \"hi\"\\\nbye", "fail")]);
        assert!(rendered(&t)[0].contains(r#"policy="say \"hi\"\\\nbye""#), "{:?}", rendered(&t));
    }
}
