//! Touch paths, and reading them in ChannelAttribution's format: one row per distinct path,
//! with the columns `path` (channels separated by `>`, spaces around names trimmed),
//! `total_conversions`, and optionally `total_conversion_value` and `total_null` (journeys
//! along the path that did not convert); `,` or `;` separated, with a header row. Other
//! columns are ignored.
//!
//! Invariant: a `Paths` has no empty path, no empty channel name, and only finite,
//! non-negative counts and values; a file with any row that breaks this is refused whole,
//! with the row and column of each problem.

use std::collections::HashMap;

/// Most distinct channels one set of paths may name.
pub const CHANNELS_MAX: usize = 4096;
/// Most touches one path may have.
pub const PATH_TOUCHES_MAX: usize = 10_000;
/// Most rows one file may have.
pub const PATH_ROWS_MAX: usize = 10_000_000;
/// Up to this many channels, a name is looked up by comparing it with each.
const LINEAR_LOOKUP_MAX: usize = 16;
/// Most problems one refusal lists (the count of the rest is given).
pub const ERRORS_LISTED_MAX: usize = 20;

/// One distinct path: its touches (channel indices into `Paths::channels`, in order), the
/// conversions and value at its end, and the journeys along it that did not convert.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRow {
    pub touches: Vec<u16>,
    pub conversions: f64,
    pub value: f64,
    pub nulls: f64,
}

/// Paths over named channels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paths {
    /// The channels, by index; added through `channel` only (which keeps `index` in step).
    pub channels: Vec<String>,
    pub rows: Vec<PathRow>,
    /// Did the input say how many journeys did not convert (a `total_null` column)? Without
    /// it, the Markov chain has no way to a non-conversion but through a removed channel.
    pub has_nulls: bool,
    /// Channel name → index, once there are more than `LINEAR_LOOKUP_MAX` channels.
    index: HashMap<String, u16>,
}

/// Why a path file is refused: every problem found, each with its place.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PathError {
    /// `(line, column name, what is wrong)`; line 0 is the file as a whole.
    pub problems: Vec<(usize, String, String)>,
    /// Problems found past the `ERRORS_LISTED_MAX` listed.
    pub more: usize,
}

impl PathError {
    fn whole(message: impl Into<String>) -> PathError {
        PathError { problems: vec![(0, String::new(), message.into())], more: 0 }
    }

    fn describe(&self) -> String {
        let mut lines: Vec<String> = self
            .problems
            .iter()
            .map(|(line, column, message)| match (line, column.is_empty()) {
                (0, _) => message.clone(),
                (line, true) => format!("line {line}: {message}"),
                (line, false) => format!("line {line}, column `{column}`: {message}"),
            })
            .collect();
        if self.more > 0 {
            lines.push(format!("… and {} more problems", self.more));
        }
        lines.join("\n")
    }
}

impl Paths {
    /// An empty set of paths, with or without non-conversion counts.
    pub fn new(has_nulls: bool) -> Paths {
        Paths { channels: Vec::new(), rows: Vec::new(), has_nulls, index: HashMap::new() }
    }

    /// The index of channel `name`, added if new (`None` past `CHANNELS_MAX`).
    pub fn channel(&mut self, name: &str) -> Option<u16> {
        // Few channels (the usual case) are found faster by looking than by hashing.
        if self.channels.len() <= LINEAR_LOOKUP_MAX {
            if let Some(at) = self.channels.iter().position(|known| known == name) {
                return Some(at as u16);
            }
        } else if let Some(&known) = self.index.get(name) {
            return Some(known);
        }
        if self.channels.len() >= CHANNELS_MAX {
            return None;
        }
        let id = self.channels.len() as u16;
        self.channels.push(name.to_owned());
        self.index.insert(name.to_owned(), id);
        Some(id)
    }

    /// Adds a path of named touches (for callers building paths themselves: the ledger, tests).
    pub fn push(&mut self, touches: &[&str], conversions: f64, value: f64, nulls: f64) {
        let touches = touches.iter().filter_map(|name| self.channel(name)).collect();
        self.rows.push(PathRow { touches, conversions, value, nulls });
    }

    /// Total conversions and value.
    pub fn totals(&self) -> (f64, f64) {
        self.rows.iter().fold((0.0, 0.0), |(c, v), row| (c + row.conversions, v + row.value))
    }

    /// A per-channel vector as a map by channel name.
    pub fn by_name<T: Clone>(&self, per_channel: &[T]) -> std::collections::BTreeMap<String, T> {
        self.channels.iter().cloned().zip(per_channel.iter().cloned()).collect()
    }

    /// Reads a path file (see the module docs).
    pub fn parse(text: &[u8]) -> Result<Paths, PathError> {
        let header_line = text.split(|b| *b == b'\n').next().unwrap_or_default();
        let delimiter = if header_line.contains(&b';') && !header_line.contains(&b',') { b';' } else { b',' };
        let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).from_reader(text);
        let headers = reader.headers().map_err(|e| PathError::whole(format!("the header row cannot be read: {e}")))?;
        let find = |name: &str| headers.iter().position(|h| h.trim() == name);
        let (Some(path_at), Some(conversions_at)) = (find("path"), find("total_conversions")) else {
            let found: Vec<&str> = headers.iter().collect();
            return Err(PathError::whole(format!(
                "the header must name the columns `path` and `total_conversions` (and optionally \
                 `total_conversion_value`, `total_null`); it names {found:?}"
            )));
        };
        let (value_at, null_at) = (find("total_conversion_value"), find("total_null"));
        let mut paths = Paths::new(null_at.is_some());
        let mut problems = Vec::new();
        let mut more = 0;
        let mut problem = |line: usize, column: &str, message: String| {
            if problems.len() < ERRORS_LISTED_MAX {
                problems.push((line, column.to_owned(), message));
            } else {
                more += 1;
            }
        };
        let mut record = csv::ByteRecord::new();
        loop {
            let line = reader.position().line() as usize;
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(error) => {
                    problem(line, "", format!("not a row of the file's columns: {error}"));
                    continue;
                }
            }
            if paths.rows.len() >= PATH_ROWS_MAX {
                problem(line, "", format!("more than {PATH_ROWS_MAX} rows"));
                break;
            }
            let field = |at: usize| std::str::from_utf8(record.get(at).unwrap_or_default()).map(str::trim);
            let mut number = |at: Option<usize>, column: &str| -> Option<f64> {
                let Some(at) = at else { return Some(0.0) };
                match field(at) {
                    Ok(text) => match text.parse::<f64>() {
                        Ok(n) if n.is_finite() && n >= 0.0 => Some(n),
                        Ok(n) => {
                            problem(
                                line,
                                column,
                                format!("`{n}` is negative or not finite; counts and values are 0 or more"),
                            );
                            None
                        }
                        Err(_) => {
                            problem(line, column, format!("`{text}` is not a number"));
                            None
                        }
                    },
                    Err(_) => {
                        problem(line, column, "is not UTF-8 text".to_owned());
                        None
                    }
                }
            };
            let conversions = number(Some(conversions_at), "total_conversions");
            let value = number(value_at, "total_conversion_value");
            let nulls = number(null_at, "total_null");
            let touches = match field(path_at) {
                Ok("") => {
                    problem(line, "path", "the path is empty".to_owned());
                    None
                }
                Ok(text) => {
                    let mut touches = Vec::new();
                    let mut fine = true;
                    for name in text.split('>').map(str::trim) {
                        if name.is_empty() {
                            problem(line, "path", format!("`{text}` has an empty channel name between two `>`"));
                            fine = false;
                            break;
                        }
                        if touches.len() == PATH_TOUCHES_MAX {
                            problem(line, "path", format!("the path has more than {PATH_TOUCHES_MAX} touches"));
                            fine = false;
                            break;
                        }
                        match paths.channel(name) {
                            Some(id) => touches.push(id),
                            None => {
                                problem(line, "path", format!("more than {CHANNELS_MAX} distinct channels"));
                                fine = false;
                                break;
                            }
                        }
                    }
                    fine.then_some(touches)
                }
                Err(_) => {
                    problem(line, "path", "is not UTF-8 text".to_owned());
                    None
                }
            };
            if let (Some(touches), Some(conversions), Some(value), Some(nulls)) = (touches, conversions, value, nulls) {
                paths.rows.push(PathRow { touches, conversions, value, nulls });
            }
        }
        if problems.is_empty() && more == 0 {
            if paths.rows.is_empty() {
                return Err(PathError::whole("the file has a header and no paths"));
            }
            Ok(paths)
        } else {
            Err(PathError { problems, more })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_either_separator_and_trims_channel_names() {
        let paths = Paths::parse(
            b"path;total_conversions;total_conversion_value;total_null\nalpha > beta;2;10.5;3\nbeta;0;0;1\n",
        )
        .unwrap();
        assert_eq!(paths.channels, ["alpha", "beta"]);
        assert_eq!(paths.rows[0], PathRow { touches: vec![0, 1], conversions: 2.0, value: 10.5, nulls: 3.0 });
        assert!(paths.has_nulls);
        let comma = Paths::parse(b"total_conversions,path\n1,a>a>b\n").unwrap();
        assert_eq!((comma.rows[0].touches.clone(), comma.has_nulls, comma.rows[0].value), (vec![0, 0, 1], false, 0.0));
    }

    #[test]
    fn every_bad_row_is_named_with_its_line_and_column() {
        let error = Paths::parse(b"path,total_conversions,total_null\na>b,-1,0\n,1,0\na>>b,1,0\nc,x,0\n").unwrap_err();
        let text = error.to_string();
        assert_eq!(error.problems.len(), 4, "{text}");
        assert!(text.contains("line 2, column `total_conversions`: `-1` is negative"), "{text}");
        assert!(text.contains("line 3, column `path`: the path is empty"), "{text}");
        assert!(text.contains("line 4, column `path`: `a>>b` has an empty channel name"), "{text}");
        assert!(text.contains("line 5, column `total_conversions`: `x` is not a number"), "{text}");
        let missing = Paths::parse(b"route,conversions\na,1\n").unwrap_err().to_string();
        assert!(missing.contains("must name the columns `path` and `total_conversions`"), "{missing}");
        assert!(Paths::parse(b"path,total_conversions\n").unwrap_err().to_string().contains("no paths"));
    }
}
