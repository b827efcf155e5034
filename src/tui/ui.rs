//! Drawing: reads [`App`], writes ratatui's buffer. [`prepare`] runs first and does the little
//! the layout needs to change in the state (rows per page, scroll, previews wanted).

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use super::app::{App, Command, ExportScope, Filter, Mode, Preview, SortKey, Status};
use super::image::graphics::{Picture, centred};
use super::image::{ColorMode, GrayPicture};
use crate::results::Tally;

/// The screen's regions for a terminal of a given size.
#[derive(Clone, Copy, Debug)]
pub struct Panes {
    /// List (or grid) block, borders included.
    pub list: Rect,
    /// Preview block, borders included; `None` when the terminal is too narrow.
    pub preview: Option<Rect>,
    pub footer: Rect,
}

/// Grid cell size in terminal cells.
const GRID_W: u16 = 20;
const GRID_H: u16 = 9;

pub fn panes(area: Rect, grid: bool) -> Panes {
    let [main, footer] = Layout::vertical([Constraint::Min(3), Constraint::Length(2)]).areas(area);
    if grid || area.width < 60 {
        return Panes {
            list: main,
            preview: None,
            footer,
        };
    }
    let list_pct = if area.width < 100 { 60 } else { 58 };
    let [list, preview] =
        Layout::horizontal([Constraint::Percentage(list_pct), Constraint::Fill(1)]).areas(main);
    Panes {
        list,
        preview: Some(preview),
        footer,
    }
}

/// Columns and rows of grid cells, and the cell size that shares the space out evenly.
fn grid_shape(list: Rect) -> (usize, usize, u16, u16) {
    let inner = inner(list);
    let cols = (inner.width / GRID_W).max(1);
    let rows = (inner.height / GRID_H).max(1);
    (
        cols as usize,
        rows as usize,
        (inner.width / cols).max(1),
        (inner.height / rows).max(1),
    )
}

fn inner(r: Rect) -> Rect {
    Block::default().borders(Borders::ALL).inner(r)
}

/// Update what depends on the screen size; returns the requests that changed (previews to
/// decode, pictures to make).
pub fn prepare(app: &mut App, area: Rect) -> Vec<Command> {
    app.refresh_view();
    app.prepare_adjusted();
    app.zoom_area = area;
    let p = panes(area, app.list.grid);
    let visible = if app.list.grid {
        let (cols, rows, _, _) = grid_shape(p.list);
        app.list.grid_cells = cols * rows;
        let start = app.list.cursor / app.list.grid_cells * app.list.grid_cells;
        start..start + app.list.grid_cells
    } else {
        // One row of the block is the column header.
        app.list.list_rows = inner(p.list).height.saturating_sub(1) as usize;
        app.scroll_to_cursor(app.list.list_rows);
        app.list.scroll..app.list.scroll + app.list.list_rows
    };
    let mut out: Vec<Command> = app.wanted_previews(visible).into_iter().collect();
    // Pictures: the zoom's (always made off this thread: it crops and resizes the whole
    // film); with a graphics protocol, the preview pane's and the grid's too.
    let shots = if app.mode == Mode::Zoom {
        app.zoom_shot(area).into_iter().collect()
    } else if app.screen.graphics {
        picture_places(app, area)
            .into_iter()
            .filter_map(|(item, rect, pane)| app.shot(item, rect, pane))
            .collect()
    } else {
        Vec::new()
    };
    out.extend(app.wanted_pictures(shots));
    out
}

/// Where this frame draws pictures in a graphics protocol. Sixel and iTerm2 pictures are
/// pixels over the cells, which ratatui does not know about: where one was and is no more, the
/// screen must be cleared (see the runtime), or its pixels would stay under blank cells.
pub fn protocol_areas(app: &App, area: Rect) -> Vec<Rect> {
    let is_protocol =
        |p: Option<&Result<Picture, String>>| matches!(p, Some(Ok(Picture::Protocol(_))));
    if app.mode == Mode::Zoom {
        let [pic, _] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
        let made = app
            .zoom_shot(area)
            .and_then(|s| app.preview.pictures.peek(s.key));
        let last = app.zoom.as_ref().and_then(|z| z.last.as_ref());
        return if is_protocol(made) || matches!(last, Some(Picture::Protocol(_))) {
            vec![pic]
        } else {
            Vec::new()
        };
    }
    if !app.screen.graphics {
        return Vec::new();
    }
    picture_places(app, area)
        .into_iter()
        .filter(|&(item, rect, pane)| {
            app.shot(item, rect, pane)
                .is_some_and(|s| is_protocol(app.preview.pictures.peek(s.key)))
        })
        .map(|(_, rect, _)| rect)
        .collect()
}

/// Where pictures go on this screen: the preview pane's (first: the current item) and the
/// grid's cells; (item, area, in the preview pane).
fn picture_places(app: &App, area: Rect) -> Vec<(usize, Rect, bool)> {
    let p = panes(area, app.list.grid);
    let mut places = Vec::new();
    if let Some(pane) = p.preview
        && let Some((item, rects)) = preview_rects(app, pane)
    {
        places.push((item, rects[0], true));
    }
    if app.list.grid {
        places.extend(
            grid_places(app, p.list)
                .into_iter()
                .map(|(i, pic, _)| (i, pic, false)),
        );
    }
    places
}

/// The grid's cells: (item, picture area, badge area).
fn grid_places(app: &App, list: Rect) -> Vec<(usize, Rect, Rect)> {
    let inner = inner(list);
    let (cols, _, cell_w, cell_h) = grid_shape(list);
    let cells = app.list.grid_cells.max(1);
    let start = app.list.cursor / cells * cells;
    let mut out = Vec::new();
    for (k, &i) in app.list.view.iter().skip(start).take(cells).enumerate() {
        let x = inner.x + (k % cols) as u16 * cell_w;
        let y = inner.y + (k / cols) as u16 * cell_h;
        if x >= inner.right() || y >= inner.bottom() {
            break;
        }
        let cell = Rect::new(
            x,
            y,
            cell_w.min(inner.right() - x),
            cell_h.min(inner.bottom() - y),
        );
        let [pic, badge] =
            Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(cell);
        let pic = Rect::new(pic.x, pic.y, pic.width.saturating_sub(1), pic.height);
        out.push((i, pic, badge));
    }
    out
}

/// The preview pane's parts for the current item: picture, probabilities, info.
fn preview_rects(app: &App, pane: Rect) -> Option<(usize, [Rect; 3])> {
    let i = app.current()?;
    let inner = inner(pane);
    // As many probability rows as leave the picture at least a third of the pane.
    let info_rows = 2 + u16::from(app.heat.on);
    let room = inner
        .height
        .saturating_sub(info_rows)
        .saturating_sub(inner.height / 3)
        .max(1);
    let n_labels = app.labels.len() as u16;
    let rects = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(n_labels.min(room)),
        Constraint::Length(info_rows),
    ])
    .areas(inner);
    Some((i, rects))
}

/// Colours and emphasis, or emphasis alone under `NO_COLOR`.
#[derive(Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }
    fn dim(self) -> Style {
        self.fg(Color::DarkGray)
    }
    fn error(self) -> Style {
        if self.color {
            Style::default().fg(Color::Red)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        }
    }
    fn warn(self) -> Style {
        if self.color {
            Style::default().fg(Color::Yellow)
        } else {
            Style::default().add_modifier(Modifier::UNDERLINED)
        }
    }
    fn title(self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    fn cursor(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    fn status(self, s: Status) -> Style {
        match s {
            Status::Error => self.error(),
            Status::OutOfScope => self.warn(),
            Status::Running => self.fg(Color::Cyan),
            Status::Pending => self.dim(),
            Status::Done => Style::default(),
        }
    }
}

/// Draw the whole screen. Call [`prepare`] first.
pub fn draw(frame: &mut Frame, app: &App, colors: ColorMode) {
    let theme = Theme {
        color: colors != ColorMode::None,
    };
    let area = frame.area();
    if app.mode == Mode::Zoom {
        draw_zoom(frame, app, area, theme, colors);
        return;
    }
    let p = panes(area, app.list.grid);
    // Counted once a frame: the title and the footer both show them.
    let summary = app.summary();
    if app.list.grid {
        draw_grid(frame, app, &summary, p.list, theme, colors);
    } else {
        draw_list(frame, app, &summary, p.list, theme);
    }
    if let Some(preview) = p.preview {
        draw_preview(frame, app, preview, theme, colors);
    }
    draw_footer(frame, app, &summary, p.footer, theme);
    if app.mode == Mode::Help {
        draw_help(frame, app, area, theme);
    }
    if app.mode == Mode::Review {
        draw_review(frame, app, area, theme);
    }
}

/// The review overlay: label metrics (as `eval` computes them) and the per-folder table.
///
/// Long on purpose: the overlay's sections drawn in screen order, a few lines each.
fn draw_review(frame: &mut Frame, app: &App, area: Rect, theme: Theme) {
    let r = app.review();
    let pct = |v: f64| {
        if v.is_nan() {
            "   -  ".to_string()
        } else {
            format!("{:5.1}%", v * 100.0)
        }
    };
    let mut lines: Vec<Line> = Vec::new();
    let head = |t: &str| Line::from(Span::styled(t.to_string(), theme.title()));
    match &r.metrics {
        Some(m) => {
            let auc = m.macro_auc.map_or("-".into(), |a| format!("{a:.3}"));
            lines.push(head(&format!(
                "labels vs predictions: {} scored of {} labelled · accuracy {} · macro AUC {auc}",
                m.n,
                r.labelled,
                pct(m.accuracy).trim()
            )));
            lines.push(Line::from(Span::styled(
                format!(
                    "{:<14} {:>6} {:>7} {:>7} {:>7} {:>6}",
                    "label", "n", "sens", "spec", "PPV", "AUC"
                ),
                theme.dim(),
            )));
            for c in &m.per_class {
                lines.push(Line::raw(format!(
                    "{:<14} {:>6} {:>7} {:>7} {:>7} {:>6}",
                    c.label,
                    c.support,
                    pct(c.sensitivity),
                    pct(c.specificity),
                    pct(c.ppv),
                    c.auc.map_or("-".into(), |a| format!("{a:.3}"))
                )));
            }
            lines.push(Line::from(Span::styled(
                "confusion: rows label, columns predicted",
                theme.dim(),
            )));
            let mut header = format!("{:<14}", "");
            for l in &app.labels {
                header.push_str(&format!(" {:>10}", fit_left(l, 10)));
            }
            lines.push(Line::from(Span::styled(header, theme.dim())));
            for (l, row) in app.labels.iter().zip(&m.confusion) {
                let mut line = format!("{:<14}", fit_left(l, 14));
                for v in row {
                    line.push_str(&format!(" {v:>10}"));
                }
                lines.push(Line::raw(line));
            }
        }
        None if r.labelled > 0 => lines.push(head(&format!(
            "{} images have labels; run the model (R) for the label metrics",
            r.labelled
        ))),
        None => lines.push(head(
            "no labels: put images in class folders (covid/, normal/, ...) or use --labels FILE.csv",
        )),
    }
    if !r.unmatched.is_empty() {
        let list: Vec<String> = r
            .unmatched
            .iter()
            .map(|(n, c)| format!("{n} ({c})"))
            .collect();
        lines.push(Line::from(Span::styled(
            format!("not matched to a model label: {}", list.join(", ")),
            theme.warn(),
        )));
    }
    lines.push(Line::raw(""));
    lines.push(head(
        "by folder (mean probability per label; border: mean heatmap share on the outer band)",
    ));
    let mut header = format!(
        "{:<24} {:>6} {:>6} {:>6}",
        "folder", "images", "errors", "flag"
    );
    for l in &app.labels {
        header.push_str(&format!(" {:>10}", fit_left(l, 10)));
    }
    header.push_str(&format!(" {:>7}", "border"));
    lines.push(Line::from(Span::styled(header, theme.dim())));
    for f in &r.folders {
        let mut line = format!(
            "{:<24} {:>6} {:>6} {:>6}",
            fit_left(&f.folder, 24),
            f.images,
            f.errors,
            f.flagged
        );
        for m in &f.mean {
            if f.scored > 0 {
                line.push_str(&format!(" {m:>10.3}"));
            } else {
                line.push_str(&format!(" {:>10}", "-"));
            }
        }
        match f.border_attention {
            Some(b) => line.push_str(&format!(" {b:>7.2}")),
            None => line.push_str(&format!(" {:>7}", "-")),
        }
        lines.push(Line::raw(line));
    }
    popup(
        frame,
        area,
        100,
        " review ",
        lines,
        " any key closes ",
        theme,
    );
}

/// A bordered box in the middle of `area`, at most `max_width` wide, over what is beneath.
fn popup(
    frame: &mut Frame,
    area: Rect,
    max_width: u16,
    title: &str,
    lines: Vec<Line>,
    bottom: &str,
    theme: Theme,
) {
    let w = area.width.min(max_width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(Span::styled(title.to_string(), theme.title()))
                .title_bottom(Line::from(bottom.to_string()).right_aligned()),
        ),
        rect,
    );
}

fn list_title(app: &App, s: &Tally) -> String {
    let mut t = format!(" {}  {} images", app.root.display(), app.items.len());
    if s.errors > 0 {
        let plural = if s.errors == 1 { "" } else { "s" };
        t.push_str(&format!(" · {} error{plural}", s.errors));
    }
    if app.work.walking {
        t.push_str(" · finding…");
    }
    if app.list.view.len() != app.items.len() {
        t.push_str(&format!(" · {} shown", app.list.view.len()));
    }
    t.push(' ');
    t
}

fn view_label(app: &App) -> String {
    let sort = match app.list.sort {
        SortKey::Name => "name".to_string(),
        SortKey::Label(l) => format!("P({})", app.manifest.display_name(l)),
        SortKey::Status => "status".to_string(),
    };
    let filter = match app.list.filter {
        Filter::All => None,
        Filter::Label(l) => Some(format!("predicted {}", app.manifest.display_name(l))),
        Filter::Flagged => Some("flagged".into()),
        Filter::Errors => Some("errors".into()),
        Filter::Disagree => Some("disagrees with label".into()),
        Filter::Duplicates if app.dups.dups_pending => Some("duplicates (grouping…)".into()),
        Filter::Duplicates => Some(match app.dups.duplicates.len() {
            1 => "duplicates: 1 group".to_string(),
            n => format!("duplicates: {n} groups"),
        }),
        Filter::Unusual => Some("unusual input".into()),
    };
    let mut s = format!(" sort: {sort}");
    if let Some(f) = filter {
        s.push_str(&format!(" · filter: {f}"));
    }
    if !app.list.search.is_empty() {
        s.push_str(&format!(" · search: {}", app.list.search));
    }
    s.push(' ');
    s
}

/// Keep the end of a path (the file name) when it does not fit.
fn fit_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// A horizontal bar of `width` cells filled to `frac`, with eighth-block resolution.
pub fn bar(frac: f32, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (frac.clamp(0.0, 1.0) * width as f32 * 8.0).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(EIGHTHS[eighths % 8]);
    }
    s
}

/// The list's (or grid's) border with the folder, counts and view; returns the inside.
fn draw_list_frame(
    frame: &mut Frame,
    app: &App,
    summary: &Tally,
    area: Rect,
    theme: Theme,
) -> Rect {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(list_title(app, summary), theme.title()))
        .title_bottom(Line::from(Span::styled(view_label(app), theme.dim())).right_aligned());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    inner
}

/// Long on purpose: the table's columns, widths and cells are built together, one screen region top
/// to bottom.
fn draw_list(frame: &mut Frame, app: &App, summary: &Tally, area: Rect, theme: Theme) {
    let inner = draw_list_frame(frame, app, summary, area, theme);
    if app.items.is_empty() {
        let msg = if app.work.walking {
            "looking for images…".to_string()
        } else {
            format!(
                "no images found in {}\n\nImages are PNG, JPEG, BMP, TIFF and DICOM files, in \
                 this folder or below. Hidden files are skipped (--hidden), links are not followed (-L).",
                app.root.display()
            )
        };
        frame.render_widget(
            Paragraph::new(msg)
                .style(theme.dim())
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let label_w = app.labels.iter().map(|l| l.len()).max().unwrap_or(5).max(5) as u16;
    // Narrow lists drop the status column: the label column shows the status until there is
    // a label, and is wide enough for the longest status.
    let status_w = if inner.width >= 64 { 12 } else { 0 };
    let label_w = if status_w == 0 {
        label_w.max(Status::OutOfScope.name().len() as u16)
    } else {
        label_w
    };
    let has_folders = app.has_folders;
    let folder_w = if has_folders && inner.width >= 90 {
        10
    } else {
        0
    };
    let bar_w = if inner.width >= 60 { 8 } else { 0 };
    let columns = 4 + u16::from(status_w > 0) + u16::from(bar_w > 0) + u16::from(folder_w > 0);
    let fixed = 1 + status_w + label_w + 4 + bar_w + folder_w + (columns - 1);
    let name_w = inner.width.saturating_sub(fixed).max(8);
    let mut widths = vec![Constraint::Length(1), Constraint::Length(name_w)];
    let mut header = vec!["", "name"];
    if status_w > 0 {
        widths.push(Constraint::Length(status_w));
        header.push("status");
    }
    widths.extend([Constraint::Length(label_w), Constraint::Length(4)]);
    header.extend(["label", "P"]);
    if bar_w > 0 {
        widths.push(Constraint::Length(bar_w));
        header.push("");
    }
    if folder_w > 0 {
        widths.push(Constraint::Length(folder_w));
        header.push("folder");
    }
    let end = (app.list.scroll + app.list.list_rows).min(app.list.view.len());
    let rows = app.list.view[app.list.scroll.min(end)..end]
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let item = &app.items[i];
            let probs = item.probs();
            let (label, p) = match item.predicted() {
                // `?`: the image is unlike the training data; check before trusting.
                Some(l) if item.is_unusual() => {
                    (format!("{}?", app.manifest.display_name(l)), probs[l])
                }
                Some(l) => (app.manifest.display_name(l).to_string(), probs[l]),
                None if status_w == 0 => (item.status.name().to_string(), f32::NAN),
                None => (String::new(), f32::NAN),
            };
            let label_style = if app.disagrees(item) {
                theme.warn()
            } else if item.predicted().is_none() {
                theme.status(item.status)
            } else {
                Style::default()
            };
            let flag = if app.is_flagged(item) {
                "⚑"
            } else if item.marked {
                "●"
            } else {
                " "
            };
            let mut cells = vec![
                Cell::from(flag).style(theme.warn()),
                Cell::from(fit_left(
                    &item.entry.rel().to_string_lossy(),
                    name_w as usize,
                )),
            ];
            if status_w > 0 {
                cells.push(Cell::from(item.status.name()).style(theme.status(item.status)));
            }
            cells.extend([
                Cell::from(label).style(label_style),
                Cell::from(if p.is_nan() {
                    String::new()
                } else {
                    format!("{p:.2}")
                }),
            ]);
            if bar_w > 0 {
                let b = if p.is_nan() {
                    String::new()
                } else {
                    bar(p, bar_w as usize)
                };
                cells.push(Cell::from(b).style(theme.fg(Color::Cyan)));
            }
            if folder_w > 0 {
                cells.push(
                    Cell::from(item.entry.folder_label.as_deref().unwrap_or_default())
                        .style(theme.dim()),
                );
            }
            let mut row = Row::new(cells);
            if app.list.scroll + k == app.list.cursor {
                row = row.style(theme.cursor());
            } else if item.marked {
                row = row.style(Style::default().add_modifier(Modifier::BOLD));
            }
            row
        });
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.dim().add_modifier(Modifier::BOLD)))
        .column_spacing(1);
    frame.render_widget(table, inner);
}

fn draw_grid(
    frame: &mut Frame,
    app: &App,
    summary: &Tally,
    area: Rect,
    theme: Theme,
    colors: ColorMode,
) {
    draw_list_frame(frame, app, summary, area, theme);
    let current = app.current();
    for (i, pic, badge) in grid_places(app, area) {
        let item = &app.items[i];
        let selected = Some(i) == current;
        draw_picture(frame, app, i, pic, theme, colors, false);
        let text = match item.predicted() {
            Some(l) => format!("{} {:.2}", app.manifest.display_name(l), item.probs()[l]),
            None => item.status.name().to_string(),
        };
        let mut style = theme.status(item.status);
        if selected {
            style = theme.cursor();
        }
        let flag = if app.is_flagged(item) { "⚑" } else { "" };
        frame.render_widget(
            Paragraph::new(fit_left(
                &format!("{flag}{text}"),
                badge.width.saturating_sub(1) as usize,
            ))
            .style(style),
            badge,
        );
    }
}

/// An item's picture, or why there is none; in the preview pane (`preview`) with the heatmap
/// when it is on, and a longer error.
fn draw_picture(
    frame: &mut Frame,
    app: &App,
    item: usize,
    area: Rect,
    theme: Theme,
    colors: ColorMode,
    preview: bool,
) {
    let error_prefix = if preview {
        "cannot show this file:\n"
    } else {
        ""
    };
    let heat = app.heat.shown(item).filter(|_| preview).map(|v| v.as_ref());
    // With a graphics protocol, the picture made for this place; until it is made (and if it
    // could not be) the half-block one stands in.
    if app.screen.graphics
        && let Some(shot) = app.shot(item, area, preview)
        && let Some(Ok(Picture::Protocol(p))) = app.preview.pictures.peek(shot.key)
    {
        frame.render_widget(ratatui_image::Image::new(p), centred(area, p.size()));
        return;
    }
    match app.preview.previews.peek(item) {
        Some(Preview::Ready { thumb, .. }) => frame.render_widget(
            GrayPicture {
                thumb: app.picture(item).unwrap_or(thumb),
                mode: colors,
                heat,
                invert: app.look.invert,
            },
            area,
        ),
        Some(Preview::Failed(e)) => frame.render_widget(
            Paragraph::new(format!("{error_prefix}{e}"))
                .style(theme.error())
                .wrap(Wrap { trim: true }),
            area,
        ),
        None => frame.render_widget(
            Paragraph::new(if app.preview_requested(item) {
                "loading…"
            } else {
                ""
            })
            .style(theme.dim())
            .alignment(Alignment::Center),
            area,
        ),
    }
}

/// Long on purpose: the preview pane's parts (image, facts, probabilities) in screen order.
fn draw_preview(frame: &mut Frame, app: &App, area: Rect, theme: Theme, colors: ColorMode) {
    let current = app.current();
    let title = current
        .map(|i| {
            let name = app.items[i]
                .entry
                .rel()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!(
                " {} ",
                fit_left(&name, area.width.saturating_sub(4) as usize)
            )
        })
        .unwrap_or_default();
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(title, theme.title()));
    frame.render_widget(block, area);
    let Some((i, [pic, probs, info])) = preview_rects(app, area) else {
        return;
    };
    let item = &app.items[i];
    draw_picture(frame, app, i, pic, theme, colors, true);
    frame.render_widget(
        Paragraph::new(probability_lines(app, item, probs, theme)),
        probs,
    );
    // Info: size, depth, format, view; then the error or the folder label.
    let describe = match app.preview.previews.peek(i) {
        Some(Preview::Ready { describe, .. }) => Some(describe.clone()),
        _ => app.row(item).and_then(|r| {
            Some(format!(
                "{}x{} {} {}-bit{}",
                r.width?,
                r.height?,
                r.format.clone()?,
                r.bit_depth?,
                r.view_position
                    .as_ref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default()
            ))
        }),
    };
    let mut describe = describe.unwrap_or_default();
    // The reader's window and invert, once changed from the file's own.
    if app.look.window.is_some()
        && let (Some(film), Some(w)) = (app.current_film(), app.window())
    {
        describe.push_str(&format!(" · {}", film.describe(w)));
    }
    if app.look.invert && app.picture(i).is_some() {
        describe.push_str(" · inverted");
    }
    let mut info_lines = vec![Line::from(Span::styled(describe, theme.dim()))];
    if app.heat.on {
        info_lines.push(heat_line(app, i, theme));
    }
    if let Some(err) = item.message() {
        info_lines.push(Line::from(Span::styled(
            err.to_string(),
            theme.status(item.status),
        )));
    } else if item.is_unusual()
        && let Some(score) = item.unusual_score()
    {
        info_lines.push(Line::from(Span::styled(
            format!("unusual input ({score:.1}x threshold): check before trusting"),
            theme.warn(),
        )));
    } else if let Some(f) = &item.entry.folder_label {
        info_lines.push(Line::from(Span::styled(
            format!("folder label: {f}"),
            theme.dim(),
        )));
    }
    frame.render_widget(Paragraph::new(info_lines), info);
}

/// The zoom: the film (or its crop) over the whole screen, the info line below.
fn draw_zoom(frame: &mut Frame, app: &App, area: Rect, theme: Theme, colors: ColorMode) {
    let [pic, info] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
    let Some(z) = &app.zoom else {
        return;
    };
    let shot = app.zoom_shot(area);
    let made = shot.as_ref().and_then(|s| app.preview.pictures.peek(s.key));
    let picture = match made {
        Some(Ok(p)) => Some(p),
        _ => z.last.as_ref(),
    };
    match picture {
        Some(Picture::Protocol(p)) => {
            frame.render_widget(ratatui_image::Image::new(p), centred(pic, p.size()))
        }
        Some(Picture::Cells(thumb)) => frame.render_widget(
            GrayPicture {
                thumb,
                mode: colors,
                // Made at fit with the heatmap's region over the whole film.
                heat: shot.as_ref().and_then(|s| s.heat.as_deref()),
                invert: false,
            },
            pic,
        ),
        None => {}
    }
    let name = app.items[z.item]
        .entry
        .rel()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = vec![name];
    match (&z.error, &z.film, &shot) {
        (Some(e), _, _) => parts.push(format!("cannot show this file: {e}")),
        (None, Some(film), Some(shot)) => {
            let c = shot.crop;
            parts.push(format!(
                "{:.1}x · {:.0}x{:.0} of {}x{} at ({:.0}, {:.0})",
                z.scale,
                c.width,
                c.height,
                film.image.width,
                film.image.height,
                c.left + c.width / 2.0,
                c.top + c.height / 2.0
            ));
            parts.push(film.describe(app.look.window.unwrap_or_else(|| film.voi())));
            if app.look.invert {
                parts.push("inverted".into());
            }
            if z.heat.is_some() && z.scale > 1.0 {
                parts.push("heatmap at fit only".into());
            }
            if made.is_none() {
                parts.push("drawing…".into());
            }
        }
        _ => parts.push("loading…".into()),
    }
    parts.push("+ - zoom · hjkl pan · 0 fit · q back".into());
    let style = if z.error.is_some() {
        theme.error()
    } else {
        theme.dim()
    };
    // The facts first: a narrow terminal loses the key hint, not the scale.
    let line: String = parts
        .join(" · ")
        .chars()
        .take(info.width as usize)
        .collect();
    frame.render_widget(Paragraph::new(line).style(style), info);
}

/// What the heatmap overlay shows for item `i`: its label and border share, or why not.
fn heat_line(app: &App, i: usize, theme: Theme) -> Line<'static> {
    let which = match app.heat.label {
        Some(l) => app.manifest.display_name(l).to_string(),
        None => "predicted".to_string(),
    };
    let text = match app.heat.of(i) {
        Some(Ok(view)) => {
            let border = view
                .heatmap
                .border_share()
                .map(|b| format!(" · border {b:.2}"))
                .unwrap_or_else(|| " · nothing raised it".into());
            let label = app.manifest.display_name(view.heatmap.label);
            let label = if app.heat.label.is_none() {
                format!("{label} (predicted)")
            } else {
                label.to_string()
            };
            format!("heatmap: {label}{border} · < > label")
        }
        Some(Err(e)) => return Line::from(Span::styled(format!("heatmap: {e}"), theme.error())),
        None if app.heat.pending(i) => format!("heatmap ({which}): computing…"),
        None => format!("heatmap ({which})"),
    };
    Line::from(Span::styled(text, theme.dim()))
}

/// The counts line; `compact` for narrow terminals.
fn summary_spans(app: &App, s: &Tally, theme: Theme, compact: bool) -> Vec<Span<'static>> {
    let sep = if compact { " " } else { " · " };
    let mut parts: Vec<Span> = Vec::new();
    if s.multi_label {
        // Independent labels: the ones flagged most often first, the others left out.
        let mut counts: Vec<(usize, usize)> = s
            .per_label
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, n)| n > 0)
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (l, n) in counts {
            parts.push(Span::raw(format!("{} {n}", app.manifest.display_name(l))));
            parts.push(Span::styled(sep, theme.dim()));
        }
    } else {
        for (l, n) in s.per_label.iter().enumerate() {
            parts.push(Span::raw(format!("{} {n}", app.manifest.display_name(l))));
            parts.push(Span::styled(sep, theme.dim()));
        }
    }
    let op = match app.labels.get(app.op_label) {
        Some(_) if compact => format!("≥{:.2}", app.threshold()),
        Some(l) => format!(" ({l} ≥ {:.2})", app.threshold()),
        None => String::new(),
    };
    let flagged = if compact { "⚑" } else { "flagged " };
    parts.push(Span::styled(
        format!("{flagged}{}{op}", s.flagged),
        theme.warn(),
    ));
    if app.manifest.unusual.is_some() {
        parts.push(Span::styled(sep, theme.dim()));
        parts.push(Span::styled(
            if compact {
                format!("?{}", s.unusual)
            } else {
                format!("unusual {}", s.unusual)
            },
            if s.unusual > 0 {
                theme.warn()
            } else {
                Style::default()
            },
        ));
    }
    parts.push(Span::styled(sep, theme.dim()));
    parts.push(Span::styled(
        format!("errors {}", s.errors),
        if s.errors > 0 {
            theme.error()
        } else {
            Style::default()
        },
    ));
    if s.out_of_scope > 0 {
        parts.push(Span::styled(sep, theme.dim()));
        parts.push(Span::raw(format!("out of scope {}", s.out_of_scope)));
    }
    parts.push(Span::styled(sep, theme.dim()));
    parts.push(Span::raw(format!("pending {}", s.pending)));
    parts
}

fn draw_footer(frame: &mut Frame, app: &App, summary: &Tally, area: Rect, theme: Theme) {
    let [top, bottom] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let parts = summary_spans(app, summary, theme, false);
    let width: usize = parts.iter().map(|p| p.content.chars().count()).sum();
    let parts = if width > top.width as usize {
        summary_spans(app, summary, theme, true)
    } else {
        parts
    };
    frame.render_widget(Paragraph::new(Line::from(parts)), top);

    let line = match (&app.mode, &app.work.progress) {
        (Mode::Search, _) => Line::from(vec![
            Span::styled("/", theme.title()),
            Span::raw(app.list.search.clone()),
            Span::styled("▏  Enter keep · Esc clear", theme.dim()),
        ]),
        (Mode::Export { path, scope }, _) => {
            let scope = match scope {
                ExportScope::Shown => format!("the {} shown", app.list.view.len()),
                ExportScope::All => format!("all {}", app.items.len()),
            };
            Line::from(vec![
                Span::styled("export to: ", theme.title()),
                Span::raw(path.clone()),
                Span::styled(
                    format!(
                        "▏  rows: {scope} (Tab) · .csv/.json/.jsonl · Enter write · Esc cancel"
                    ),
                    theme.dim(),
                ),
            ])
        }
        (_, Some(p)) => {
            let width = (bottom.width as usize / 3).max(10);
            let frac = p.done as f32 / p.total.max(1) as f32;
            let filled = bar(frac, width);
            let rest = "░".repeat(width.saturating_sub(filled.chars().count()));
            let rate = match app.rate_and_eta() {
                Some((rate, eta)) => {
                    let secs = eta.as_secs();
                    format!("  {rate:.1} img/s  ETA {}:{:02}", secs / 60, secs % 60)
                }
                None => String::new(),
            };
            Line::from(vec![
                Span::styled(filled, theme.fg(Color::Cyan)),
                Span::styled(rest, theme.dim()),
                Span::raw(format!(" {}/{}{rate}", p.done, p.total)),
                Span::styled("  Esc cancel", theme.dim()),
            ])
        }
        (_, None) => match (&app.message, &app.work.last_run) {
            (Some(m), _) => Line::from(Span::styled(m.clone(), theme.warn())),
            (None, last) => {
                let mut spans = Vec::new();
                if let Some(l) = last {
                    spans.push(Span::raw(format!("{l} · ")));
                } else if app.work.restored > 0 {
                    spans.push(Span::raw(format!(
                        "{} from the results store · ",
                        app.work.restored
                    )));
                }
                spans.push(Span::styled(
                    "? help · R run all · r run selection · / search · s sort · f filter · g grid · z zoom · e export · q quit",
                    theme.dim(),
                ));
                Line::from(spans)
            }
        },
    };
    frame.render_widget(Paragraph::new(line), bottom);
}

/// The probability pane: one row per label (display names), most probable first when the
/// labels do not all fit, scrolled with `[` `]`, the last row saying how many are hidden.
fn probability_lines(
    app: &App,
    item: &super::app::Item,
    area: Rect,
    theme: Theme,
) -> Vec<Line<'static>> {
    let rows = area.height as usize;
    let n = app.labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    let fits = n <= rows;
    if !fits && !item.probs().is_empty() {
        order.sort_by(|&a, &b| item.probs()[b].total_cmp(&item.probs()[a]));
    }
    let shown = if fits { n } else { rows.saturating_sub(1) };
    let first = app.preview.prob_scroll.min(n.saturating_sub(shown));
    let names: Vec<&str> = (0..n).map(|l| app.manifest.display_name(l)).collect();
    let label_w = names
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .min((area.width as usize).saturating_sub(12).max(6));
    let bar_w = (area.width as usize).saturating_sub(label_w + 7);
    let mut lines: Vec<Line> = order[first..first + shown]
        .iter()
        .map(|&l| {
            let p = item.probs().get(l).copied();
            let op = app.threshold_of(l).filter(|_| l == app.op_label);
            let mut style = Style::default();
            if item.predicted() == Some(l) {
                style = style.add_modifier(Modifier::BOLD);
            }
            let name = fit_left(names[l], label_w);
            let mut spans = vec![Span::styled(format!("{name:<label_w$} "), style)];
            match p {
                Some(p) => {
                    spans.push(Span::styled(format!("{p:.2} "), style));
                    let over = app.threshold_of(l).is_some_and(|t| p >= t);
                    spans.push(Span::styled(
                        bar(p, bar_w),
                        if over {
                            theme.warn()
                        } else {
                            theme.fg(Color::Cyan)
                        },
                    ));
                }
                None => spans.push(Span::styled("  – ", theme.dim())),
            }
            if let (Some(t), None) = (op, p) {
                spans.push(Span::styled(format!(" (flag ≥ {t:.2})"), theme.dim()));
            }
            Line::from(spans)
        })
        .collect();
    if !fits {
        let hidden = n - shown;
        lines.push(Line::from(Span::styled(
            format!("{hidden} more labels: [ ] scroll"),
            theme.dim(),
        )));
    }
    lines
}

fn draw_help(frame: &mut Frame, app: &App, area: Rect, theme: Theme) {
    let line = |b: &super::keys::Binding| {
        Line::from(vec![
            Span::styled(format!("{:>15} ", b.keys), theme.title()),
            Span::raw(b.help),
        ])
    };
    let mut lines: Vec<Line> = super::keys::KEYS.iter().map(line).collect();
    lines.push(Line::from(Span::styled("in the zoom", theme.dim())));
    lines.extend(super::keys::ZOOM_KEYS.iter().map(line));
    // Taller than the terminal (80 x 24): `j`/`k` scroll, the bottom line says so.
    let room = area.height.saturating_sub(2) as usize;
    let scroll = app.help_scroll.min(lines.len().saturating_sub(room));
    let clipped = lines.len() > room;
    let lines: Vec<Line> = lines.into_iter().skip(scroll).collect();
    let bottom = if clipped {
        " j k scroll · any other key closes "
    } else {
        " any key closes "
    };
    let title = format!(" keys · pictures: {} ", app.screen.name);
    popup(frame, area, 96, &title, lines, bottom, theme);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_use_eighths() {
        assert_eq!(bar(0.0, 4), "");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██");
        assert_eq!(bar(0.5 + 1.0 / 32.0, 4), "██▏");
        assert_eq!(bar(7.0, 2), "██");
    }

    #[test]
    fn long_paths_keep_their_end() {
        assert_eq!(fit_left("covid/abc.png", 20), "covid/abc.png");
        assert_eq!(fit_left("covid/abc.png", 8), "…abc.png");
        assert_eq!(fit_left("abc", 0), "");
    }
}
