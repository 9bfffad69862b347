//! Backblaze-format drive data: rows by drive, columns found by header name.

use super::*;

/// One day of one drive.
#[derive(Clone, Debug)]
pub struct Row {
    pub day: i64,
    pub date: String,
    pub failure: bool,
    /// Raw values of `ATTRS` (None: not in the file or empty).
    pub smart: [Option<f64>; ATTRS.len()],
}

/// A drive's days, in date order, as read (file order kept for scoring output).
pub struct Data {
    pub drives: HashMap<String, Vec<Row>>,
    /// Drive model (e.g. "Hitachi HDS5C3030ALA630") per serial, when the file has it.
    pub models: HashMap<String, String>,
    /// (serial, index into its rows) in file order.
    pub order: Vec<(String, usize)>,
    pub columns_found: Vec<u32>,
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 of a YYYY-MM-DD date.
pub fn parse_day(s: &str) -> Option<i64> {
    let mut it = s.trim().split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d) && it.next().is_none())
        .then(|| days_from_civil(y, m, d))
}

/// The lines of a file, gunzipped if it starts with the gzip magic.
fn lines_of(path: &Path) -> anyhow::Result<std::io::Lines<BufReader<Box<dyn Read>>>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut r = BufReader::new(f);
    let gz = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let input: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    Ok(BufReader::new(input).lines())
}

/// Where the header puts the columns read (found by name, as files differ in columns).
struct Columns {
    date: usize,
    serial: usize,
    failure: usize,
    /// Per attribute of `ATTRS`.
    attrs: Vec<Option<usize>>,
    model: Option<usize>,
}

impl Columns {
    fn of(header: &str, path: &Path) -> anyhow::Result<Columns> {
        let cols: Vec<&str> = header.trim().split(',').collect();
        let find = |name: &str| cols.iter().position(|c| c.trim() == name);
        let (Some(date), Some(serial), Some(failure)) =
            (find("date"), find("serial_number"), find("failure"))
        else {
            bail!(
                "{}: header needs date, serial_number and failure columns",
                path.display()
            );
        };
        Ok(Columns {
            date,
            serial,
            failure,
            attrs: ATTRS
                .iter()
                .map(|a| find(&format!("smart_{a}_raw")))
                .collect(),
            model: find("model"),
        })
    }

    /// Line `lno` of `path`: its serial, drive model (when the file has the column) and row.
    fn row<'l>(
        &self,
        line: &'l str,
        lno: usize,
        path: &Path,
    ) -> anyhow::Result<(String, Option<&'l str>, Row)> {
        let f: Vec<&'l str> = line.split(',').collect();
        let get = |c: usize| f.get(c).map(|s| s.trim()).unwrap_or("");
        let day = parse_day(get(self.date)).with_context(|| {
            format!(
                "{}: line {lno}: bad date {:?}",
                path.display(),
                get(self.date)
            )
        })?;
        let failure = match get(self.failure) {
            "1" => true,
            "0" | "" => false,
            x => bail!("{}: line {lno}: bad failure value {x:?}", path.display()),
        };
        let mut smart = [None; ATTRS.len()];
        for (i, c) in self.attrs.iter().enumerate() {
            if let Some(c) = c {
                let v = get(*c);
                if !v.is_empty() {
                    smart[i] = Some(v.parse::<f64>().with_context(|| {
                        format!(
                            "{}: line {lno}: bad smart_{}_raw {v:?}",
                            path.display(),
                            ATTRS[i]
                        )
                    })?);
                }
            }
        }
        let serial = get(self.serial).to_string();
        if serial.is_empty() {
            bail!("{}: line {lno}: empty serial_number", path.display());
        }
        let model = self.model.map(|c| f.get(c).map_or("", |s| (*s).trim()));
        let row = Row {
            day,
            date: get(self.date).to_string(),
            failure,
            smart,
        };
        Ok((serial, model, row))
    }
}

/// Reads a Backblaze-format CSV (plain or gzip).
pub fn read(path: &Path) -> anyhow::Result<Data> {
    let mut lines = lines_of(path)?;
    let header = lines
        .next()
        .context("empty file")?
        .with_context(|| format!("{}: line 1", path.display()))?;
    let cols = Columns::of(&header, path)?;
    let mut data = Data {
        drives: HashMap::new(),
        models: HashMap::new(),
        order: Vec::new(),
        columns_found: ATTRS
            .iter()
            .zip(&cols.attrs)
            .filter(|(_, c)| c.is_some())
            .map(|(a, _)| *a)
            .collect(),
    };
    for (n, line) in lines.enumerate() {
        let lno = n + 2;
        let line = line.with_context(|| format!("{}: line {lno}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let (serial, model, row) = cols.row(&line, lno, path)?;
        if let Some(m) = model {
            if !data.models.contains_key(&serial) {
                data.models.insert(serial.clone(), m.to_string());
            }
        }
        let rows = data.drives.entry(serial.clone()).or_default();
        rows.push(row);
        data.order.push((serial, rows.len() - 1));
    }
    sort_rows(&mut data);
    Ok(data)
}

/// Rows in date order per drive; `order` keeps pointing at the same rows.
fn sort_rows(data: &mut Data) {
    for (serial, rows) in data.drives.iter_mut() {
        if rows.windows(2).any(|w| w[0].day > w[1].day) {
            let mut idx: Vec<usize> = (0..rows.len()).collect();
            idx.sort_by_key(|i| rows[*i].day);
            let mut new_pos = vec![0; rows.len()];
            for (p, i) in idx.iter().enumerate() {
                new_pos[*i] = p;
            }
            let sorted: Vec<Row> = idx.iter().map(|i| rows[*i].clone()).collect();
            *rows = sorted;
            for o in data.order.iter_mut().filter(|o| &o.0 == serial) {
                o.1 = new_pos[o.1];
            }
        }
    }
}
