//! The counts behind the result gauges: interned label values, series with counts, and what
//! each report contributed (see the module notes of [`super`]).

use std::{
    collections::{hash_map::RandomState, HashMap, HashSet},
    fmt::Write as _,
    hash::BuildHasher as _,
    sync::Arc,
};

use hashbrown::HashTable;

use super::labels::{Field, LabelSet, Rows};

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

/// Ids per key before the label values: which gauge the series is in.
const GAUGE: usize = 1;

/// The gauge id of a cluster report's series (a namespaced one's is 0).
const CLUSTER: u32 = 1;

/// What one report contributed: results per series, and results refused at the limit.
struct Contribution {
    series: Box<[(u32, u32)]>,
    refused: u32,
}

/// The key of `slot` among `keys`, `width` ids per slot.
fn key_of(keys: &[u32], width: usize, slot: u32) -> &[u32] {
    let start = slot as usize * width;
    &keys[start..start + width]
}

/// Every series and every report's contribution to them.
///
/// A series is a slot: its key (which gauge, then one interned value per label, in the label
/// set's order) and how many results it counts. Keys have the width of the label set, so they sit
/// one after the other in one vector rather than each in an allocation of its own, and the index
/// finds a slot by hashing its key there.
pub(crate) struct Tally {
    /// Ids per key: [`GAUGE`] and one per label.
    width: usize,
    /// Most series at once (`--result-metrics-max-series`).
    max_series: usize,
    values: Interner,
    /// The key of every slot, `width` ids each, slot after slot (a free slot's is stale).
    keys: Vec<u32>,
    /// Results counted per slot. 0 is a free slot (in `free_series`), or one the write in
    /// progress emptied and has not freed yet.
    counts: Vec<u32>,
    free_series: Vec<u32>,
    /// The slot of each series not freed, found by its key hashed with `hasher`.
    index: HashTable<u32>,
    hasher: RandomState,
    /// The key being looked up, kept so a lookup does not allocate.
    scratch: Vec<u32>,
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
    /// An empty tally for series labelled by `set`.
    pub(crate) fn new(set: &LabelSet, max_series: usize) -> Self {
        Self {
            width: GAUGE + set.width(),
            max_series,
            values: Interner::new(),
            keys: Vec::new(),
            counts: Vec::new(),
            free_series: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            scratch: Vec::new(),
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
        let series = (self.keys.capacity() + self.counts.capacity() + self.free_series.capacity()) * 4
            + self.index.capacity() * 5;
        self.values.bytes() + series + contributions
    }

    /// Replaces the contribution of the report `(resource, namespace, name)` by `rows` (none:
    /// the report is gone). The old contribution is taken away first, so a rewrite of a report
    /// at the limit keeps its own series. A report without a namespace counts in the cluster
    /// gauge.
    pub(crate) fn set(&mut self, resource: u8, namespace: &str, name: &str, rows: &Rows<'_>) {
        let found = match (self.values.get(namespace), self.values.get(name)) {
            (Some(ns), Some(n)) => Some((resource, ns, n)),
            _ => None,
        };
        // Series the old contribution leaves at 0 are freed only after the new rows are placed,
        // so a rewrite that keeps them does not free and rebuild them.
        let mut emptied = Vec::new();
        if let Some(old) = found.and_then(|key| self.reports.remove(&key)) {
            for &(slot, n) in old.series.iter() {
                let count = &mut self.counts[slot as usize];
                *count -= n;
                if *count == 0 {
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
        let cluster = namespace.is_empty();
        let mut slots = Vec::with_capacity(rows.len());
        let mut refused = 0u32;
        let mut refused_keys = HashSet::new();
        for row in rows.iter() {
            match self.add(cluster, row) {
                Some(slot) => slots.push(slot),
                None => {
                    refused += 1;
                    refused_keys.insert(row);
                }
            }
        }
        for slot in emptied {
            if self.counts[slot as usize] == 0 {
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

    /// Counts one result, labelled `row`, in its series of the cluster gauge or the namespaced
    /// one, creating the series unless that would pass the limit; the slot, or None when refused.
    fn add(&mut self, cluster: bool, row: &[&str]) -> Option<u32> {
        let width = self.width;
        debug_assert_eq!(GAUGE + row.len(), width, "a row has one value per label");
        self.scratch.clear();
        self.scratch.push(if cluster { CLUSTER } else { 0 });
        let mut known = true;
        for text in row {
            match self.values.get(text) {
                Some(id) => self.scratch.push(id),
                None => {
                    known = false;
                    break;
                }
            }
        }
        if known {
            let hash = self.hasher.hash_one(self.scratch.as_slice());
            let (keys, key) = (&self.keys, self.scratch.as_slice());
            if let Some(&slot) = self.index.find(hash, |&s| key_of(keys, width, s) == key) {
                let count = &mut self.counts[slot as usize];
                if *count == 0 {
                    // Emptied by this same write and not freed yet: reviving it is a new series.
                    if self.live >= self.max_series {
                        return None;
                    }
                    self.live += 1;
                }
                *count += 1;
                return Some(slot);
            }
        }
        if self.live >= self.max_series {
            return None;
        }
        self.scratch.truncate(GAUGE);
        for text in row {
            let id = self.values.acquire(text);
            self.scratch.push(id);
        }
        let slot = match self.free_series.pop() {
            Some(slot) => {
                let start = slot as usize * width;
                self.keys[start..start + width].copy_from_slice(&self.scratch);
                self.counts[slot as usize] = 1;
                slot
            }
            None => {
                self.keys.extend_from_slice(&self.scratch);
                self.counts.push(1);
                (self.counts.len() - 1) as u32
            }
        };
        let hash = self.hasher.hash_one(self.scratch.as_slice());
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| hasher.hash_one(key_of(keys, width, s)));
        self.live += 1;
        Some(slot)
    }

    /// Frees an empty series and its label values.
    fn free(&mut self, slot: u32) {
        let width = self.width;
        let key = key_of(&self.keys, width, slot);
        let hash = self.hasher.hash_one(key);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        for &id in &key[GAUGE..] {
            self.values.release(id);
        }
        self.free_series.push(slot);
    }

    /// Appends both gauges in Prometheus text format, labelled by `set` (the set this tally was
    /// made for): `policy_report_result` for namespaced reports, `cluster_policy_report_result`
    /// for cluster ones, without the `namespace` label. A series is worth its count, or 1 in the
    /// detailed mode (one per result, as Policy Reporter sets it).
    pub(crate) fn render(&self, set: &LabelSet, out: &mut String) {
        for (cluster, family, help) in [
            (false, "policy_report_result", "Results of namespaced policy reports, by their labels."),
            (true, "cluster_policy_report_result", "Results of cluster policy reports, by their labels."),
        ] {
            let _ = write!(out, "# HELP {family} {help}\n# TYPE {family} gauge\n");
            for (slot, &count) in self.counts.iter().enumerate() {
                let key = key_of(&self.keys, self.width, slot as u32);
                if count == 0 || (key[0] == CLUSTER) != cluster {
                    continue;
                }
                out.push_str(family);
                let mut first = true;
                for (label, &id) in set.labels().iter().zip(&key[GAUGE..]) {
                    if cluster && label.field == Field::Namespace {
                        continue;
                    }
                    out.push(if first { '{' } else { ',' });
                    first = false;
                    out.push_str(&label.name);
                    out.push_str("=\"");
                    escape_into(self.values.text(id), out);
                    out.push('"');
                }
                out.push_str(if first { " " } else { "} " });
                let value = if set.counts() { count } else { 1 };
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
    use crate::result_metrics::{Mode, Settings};

    fn set(mode: Mode) -> LabelSet {
        LabelSet::of(&Settings { mode, ..Default::default() }).unwrap().unwrap()
    }

    /// Simple rows (category, namespace, policy, severity, source, status) from (namespace,
    /// policy, status) triples.
    fn rows<'a>(triples: &[(&'a str, &'a str, &'a str)]) -> Rows<'a> {
        Rows::from_values(
            6,
            triples.iter().flat_map(|&(ns, policy, status)| ["", ns, policy, "", "", status]).collect(),
        )
    }

    fn rendered(tally: &Tally, set: &LabelSet) -> Vec<String> {
        let mut out = String::new();
        tally.render(set, &mut out);
        out.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
    }

    #[test]
    fn contributions_are_replaced_and_taken_away_exactly() {
        let simple = set(Mode::Simple);
        let mut t = Tally::new(&simple, 100);
        t.set(0, "a", "r1", &rows(&[("a", "p", "fail"), ("a", "p", "fail"), ("a", "q", "pass")]));
        t.set(0, "a", "r2", &rows(&[("a", "p", "fail")]));
        assert_eq!(t.series(), 2);
        let p = r#"policy_report_result{category="",namespace="a",policy="p",severity="",source="",status="fail"}"#;
        assert!(rendered(&t, &simple).contains(&format!("{p} 3")), "{:?}", rendered(&t, &simple));
        t.set(0, "a", "r1", &rows(&[("a", "p", "fail")]));
        assert!(rendered(&t, &simple).contains(&format!("{p} 2")));
        assert_eq!(t.series(), 1, "q's only result is gone");
        t.set(0, "a", "r1", &Rows::none());
        t.set(0, "a", "r2", &Rows::none());
        assert_eq!((t.series(), t.reports()), (0, 0));
        assert!(rendered(&t, &simple).is_empty());
        // Every label value was released: only the empty string is left, and so is every slot.
        assert_eq!(t.values.ids.len(), 0);
        assert_eq!(t.values.free.len(), t.values.values.len() - 1);
        assert_eq!((t.index.len(), t.free_series.len()), (0, t.counts.len()));
    }

    #[test]
    fn detailed_series_are_worth_one_and_cluster_reports_have_no_namespace_label() {
        let detailed = set(Mode::Detailed);
        let mut t = Tally::new(&detailed, 100);
        let row = ["", "", "", "", "p", "", "", "", "", "fail"];
        t.set(1, "", "c", &Rows::from_values(10, [row, row].concat()));
        assert_eq!(
            rendered(&t, &detailed),
            [
                r#"cluster_policy_report_result{category="",kind="",name="",policy="p",report="",rule="",severity="",source="",status="fail"} 1"#
            ]
        );
    }

    #[test]
    fn without_a_namespace_label_the_gauge_still_separates_cluster_and_namespaced_reports() {
        let custom = LabelSet::of(&Settings {
            mode: Mode::Custom,
            labels: vec!["policy".into()],
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let mut t = Tally::new(&custom, 100);
        t.set(0, "a", "r", &Rows::from_values(1, vec!["p", "p"]));
        t.set(0, "b", "r", &Rows::from_values(1, vec!["p"]));
        t.set(1, "", "c", &Rows::from_values(1, vec!["p"]));
        assert_eq!(
            rendered(&t, &custom),
            [r#"policy_report_result{policy="p"} 3"#, r#"cluster_policy_report_result{policy="p"} 1"#]
        );
        assert_eq!(t.series(), 2);
    }

    #[test]
    fn the_limit_refuses_new_series_counts_them_and_lets_rewrites_keep_theirs() {
        let mut t = Tally::new(&set(Mode::Simple), 2);
        t.set(0, "a", "r1", &rows(&[("a", "p", "fail"), ("a", "q", "fail")]));
        t.set(
            0,
            "a",
            "r2",
            &rows(&[("a", "x", "fail"), ("a", "y", "fail"), ("a", "y", "fail"), ("a", "p", "fail")]),
        );
        assert_eq!((t.series(), t.refused_results, t.refused_series_total), (2, 3, 2));
        // A rewrite of r1 with one new series: its old series are taken away first.
        t.set(0, "a", "r1", &rows(&[("a", "z", "fail")]));
        assert_eq!((t.series(), t.refused_results), (2, 3));
        t.set(0, "a", "r2", &Rows::none());
        assert_eq!((t.series(), t.refused_results, t.refused_series_total), (1, 0, 2));
    }

    #[test]
    fn label_values_are_escaped() {
        let simple = set(Mode::Simple);
        let mut t = Tally::new(&simple, 10);
        t.set(0, "a", "r", &rows(&[("a", "say \"hi\"\\\nbye", "fail")]));
        assert!(
            rendered(&t, &simple)[0].contains(r#"policy="say \"hi\"\\\nbye""#),
            "{:?}",
            rendered(&t, &simple)
        );
    }
}
