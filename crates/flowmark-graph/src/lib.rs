//! Drawing a workflow: SVG, Mermaid or Graphviz DOT, for `flowmark graph` and the web UI.
//!
//! The workflow is first turned into one `Diagram` (a node per step, one shared `end` node,
//! an arrow per `Step::edges` entry), and each format is a plain rendering of that value, so
//! the three formats never disagree on what is drawn. SVG is laid out by `layout-rs` (layered,
//! top to bottom) and drawn here through its `RenderBackend` trait: the library places boxes
//! and routes arrows, this module decides shapes, colours and text, because the library's own
//! SVG writer has no diamond and no per-node style. An SVG can carry [`Marks`]: steps drawn
//! with a highlight ring and, optionally, a count (the run explorer marks where a run is; the
//! workflow page, how many runs wait at each step).
//!
//! Invariant: the output depends only on the workflow and the marks (same input, same bytes),
//! and every text from the definition is escaped for the format it lands in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flowmark_core::Workflow;
use flowmark_core::model::{JoinMode, Step, StepKind, Target, Wait};
use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::shapes::{Arrow as LayoutArrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

/// Steps to draw with a highlight: by step id, with a count shown in a badge when `Some`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    pub steps: BTreeMap<String, Option<u64>>,
}

/// The workflow as a standalone SVG image, with `marks` drawn over their steps.
pub fn svg(workflow: &Workflow, marks: &Marks) -> String {
    draw_svg(&Diagram::new(workflow), marks)
}

/// The workflow as a Mermaid flowchart.
pub fn mermaid(workflow: &Workflow) -> String {
    draw_mermaid(&Diagram::new(workflow))
}

/// The workflow as a Graphviz digraph.
pub fn dot(workflow: &Workflow) -> String {
    draw_dot(&Diagram::new(workflow))
}

/// What every format draws: nodes in step order, then the `end` node when anything reaches it.
struct Diagram {
    workflow_id: String,
    /// The workflow's name, or its id when it has none.
    title: String,
    /// The id, shown beside the title when the title is a name.
    subtitle: Option<String>,
    nodes: Vec<Node>,
    arrows: Vec<Arrow>,
}

struct Node {
    /// The step id, or `end` for the shared terminal node (a reserved word, so never a step id).
    id: String,
    kind: NodeKind,
    /// What the step does, one short line each: its kind, and the action, wait or goal detail.
    detail: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Action,
    Task,
    Approval,
    Wait,
    Branch,
    Split,
    Parallel,
    Join,
    Goal,
    Exit,
    Subflow,
    End,
}

struct Arrow {
    from_index: usize,
    to_index: usize,
    label: Option<String>,
    line: Line,
}

/// The way off the usual path (a timeout, a rejection) is dashed so the happy path reads first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    Solid,
    Dashed,
}

impl Diagram {
    fn new(workflow: &Workflow) -> Diagram {
        let mut nodes: Vec<Node> = workflow.steps.iter().map(Node::for_step).collect();
        let end_index = nodes.len();
        let mut arrows = Vec::new();
        for (from_index, step) in workflow.steps.iter().enumerate() {
            for edge in step.edges() {
                let to_index = match edge.target {
                    Target::Step(index) => index.index(),
                    Target::End => end_index,
                };
                let line = match (&step.kind, edge.label.as_deref()) {
                    (StepKind::Approval(_), Some(label)) if label != "approved" => Line::Dashed,
                    (StepKind::Wait(_), Some("timeout")) => Line::Dashed,
                    _ => Line::Solid,
                };
                arrows.push(Arrow { from_index, to_index, label: edge.label.as_deref().map(clean), line });
            }
        }
        if arrows.iter().any(|arrow| arrow.to_index == end_index) {
            nodes.push(Node { id: "end".to_owned(), kind: NodeKind::End, detail: Vec::new() });
        }
        let (title, subtitle) = match &workflow.name {
            Some(name) => (clean(name), Some(workflow.id.clone())),
            None => (workflow.id.clone(), None),
        };
        Diagram { workflow_id: workflow.id.clone(), title, subtitle, nodes, arrows }
    }
}

impl Node {
    fn for_step(step: &Step) -> Node {
        let (kind, detail) = match &step.kind {
            StepKind::Action(action) => (NodeKind::Action, vec![format!("action: {}", action.name())]),
            StepKind::Task(_) => (NodeKind::Task, vec!["task".to_owned()]),
            StepKind::Approval(_) => (NodeKind::Approval, vec!["approval".to_owned()]),
            StepKind::Wait(wait) => (NodeKind::Wait, wait_detail(wait)),
            StepKind::Branch(_) => (NodeKind::Branch, vec!["branch".to_owned()]),
            StepKind::Split(_) => (NodeKind::Split, vec!["split".to_owned()]),
            StepKind::Parallel(_) => (NodeKind::Parallel, vec!["parallel".to_owned()]),
            StepKind::Join(JoinMode::All) => (NodeKind::Join, vec!["join all".to_owned()]),
            StepKind::Join(JoinMode::Any) => (NodeKind::Join, vec!["join any".to_owned()]),
            StepKind::Goal(goal) => (NodeKind::Goal, vec![format!("goal: {}", clean(&goal.name))]),
            StepKind::Exit(exit) => match &exit.reason {
                Some(reason) => (NodeKind::Exit, vec![format!("exit: {}", clean(reason))]),
                None => (NodeKind::Exit, vec!["exit".to_owned()]),
            },
            StepKind::Subflow(subflow) => {
                let waits = if subflow.wait { ", waits" } else { "" };
                (NodeKind::Subflow, vec![format!("subflow: {}{waits}", clean(&subflow.workflow))])
            }
        };
        Node { id: step.id.to_string(), kind, detail }
    }

    /// The id first, then the detail lines: what Mermaid and DOT print inside the shape.
    fn lines(&self) -> Vec<&str> {
        std::iter::once(self.id.as_str()).chain(self.detail.iter().map(String::as_str)).collect()
    }
}

fn wait_detail(wait: &Wait) -> Vec<String> {
    match wait {
        Wait::Duration(duration) => vec![format!("wait {duration}")],
        Wait::TimeOfDay { minute, weekdays, .. } => {
            let mut line = format!("wait until {:02}:{:02}", minute / 60, minute % 60);
            if !weekdays.is_empty() {
                let days: Vec<String> = weekdays.iter().map(ToString::to_string).collect();
                let _ = write!(line, " {}", days.join(" "));
            }
            vec![line]
        }
        Wait::Until(at) => vec![format!("wait until {at}")],
        Wait::Event { name, timeout, .. } => {
            let mut lines = vec![format!("wait for {}", clean(name))];
            lines.extend(timeout.map(|timeout| format!("timeout {timeout}")));
            lines
        }
    }
}

/// One line of plain text: whitespace runs (a multi-line condition) become one space, and
/// control characters, which no format can carry, are dropped.
fn clean(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.join(" ").chars().filter(|c| !c.is_control()).collect()
}

/// Fill and stroke of each kind, shared by the three formats so a reader learns one legend.
struct Palette {
    fill: &'static str,
    stroke: &'static str,
    text: &'static str,
}

impl NodeKind {
    fn class(self) -> &'static str {
        match self {
            NodeKind::Action => "action",
            NodeKind::Task => "task",
            NodeKind::Approval => "approval",
            NodeKind::Wait => "wait",
            NodeKind::Branch => "branch",
            NodeKind::Split => "split",
            NodeKind::Parallel => "parallel",
            NodeKind::Join => "join",
            NodeKind::Goal => "goal",
            NodeKind::Exit => "exit",
            NodeKind::Subflow => "subflow",
            NodeKind::End => "terminal",
        }
    }

    fn palette(self) -> Palette {
        let (fill, stroke, text) = match self {
            NodeKind::Action => ("#dbeafe", "#1d4ed8", TEXT_COLOR),
            NodeKind::Task => ("#fef3c7", "#b45309", TEXT_COLOR),
            NodeKind::Approval => ("#ede9fe", "#6d28d9", TEXT_COLOR),
            NodeKind::Wait => ("#ccfbf1", "#0f766e", TEXT_COLOR),
            NodeKind::Branch => ("#ffedd5", "#c2410c", TEXT_COLOR),
            NodeKind::Split => ("#fce7f3", "#be185d", TEXT_COLOR),
            NodeKind::Parallel | NodeKind::Join => ("#334155", "#0f172a", "#ffffff"),
            NodeKind::Goal => ("#dcfce7", "#15803d", TEXT_COLOR),
            NodeKind::Exit => ("#fee2e2", "#b91c1c", TEXT_COLOR),
            NodeKind::Subflow => ("#f3f4f6", "#374151", TEXT_COLOR),
            NodeKind::End => ("#111827", "#111827", "#ffffff"),
        };
        Palette { fill, stroke, text }
    }

    /// Every kind in a fixed order, so style blocks come out in the same order every time.
    const ALL: [NodeKind; 12] = [
        NodeKind::Action,
        NodeKind::Task,
        NodeKind::Approval,
        NodeKind::Wait,
        NodeKind::Branch,
        NodeKind::Split,
        NodeKind::Parallel,
        NodeKind::Join,
        NodeKind::Goal,
        NodeKind::Exit,
        NodeKind::Subflow,
        NodeKind::End,
    ];
}

const TEXT_COLOR: &str = "#1f2937";
const EDGE_COLOR: &str = "#475569";
const EDGE_DASHED_COLOR: &str = "#be123c";

impl Line {
    fn color(self) -> &'static str {
        match self {
            Line::Solid => EDGE_COLOR,
            Line::Dashed => EDGE_DASHED_COLOR,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mermaid

fn draw_mermaid(diagram: &Diagram) -> String {
    // Writing to a `String` cannot fail, hence `let _ =` on every `write!` in this module.
    let mut out = String::new();
    // A comment, not front matter: a title with a colon or quote would need YAML escaping there.
    let _ = match &diagram.subtitle {
        Some(subtitle) => writeln!(out, "%% {} ({subtitle})", diagram.title),
        None => writeln!(out, "%% {}", diagram.title),
    };
    out.push_str("flowchart TD\n");
    for (index, node) in diagram.nodes.iter().enumerate() {
        let label = node.lines().iter().map(|line| mermaid_escape(line)).collect::<Vec<_>>().join("<br/>");
        let (open, close) = match node.kind {
            NodeKind::Action => ("[", "]"),
            NodeKind::Task => ("(", ")"),
            NodeKind::Approval => ("{{", "}}"),
            NodeKind::Wait => ("([", "])"),
            NodeKind::Branch | NodeKind::Split => ("{", "}"),
            // Trapezoids: wide at the side where the branches are.
            NodeKind::Parallel => ("[/", "\\]"),
            NodeKind::Join => ("[\\", "/]"),
            NodeKind::Goal => ("(((", ")))"),
            NodeKind::Exit | NodeKind::End => ("((", "))"),
            NodeKind::Subflow => ("[[", "]]"),
        };
        let _ = writeln!(out, "    {}{open}\"{label}\"{close}", mermaid_id(diagram, index));
    }
    for arrow in &diagram.arrows {
        let link = match arrow.line {
            Line::Solid => "-->",
            Line::Dashed => "-.->",
        };
        let from = mermaid_id(diagram, arrow.from_index);
        let to = mermaid_id(diagram, arrow.to_index);
        match &arrow.label {
            Some(label) => {
                let _ = writeln!(out, "    {from} {link}|\"{}\"| {to}", mermaid_escape(label));
            }
            None => {
                let _ = writeln!(out, "    {from} {link} {to}");
            }
        }
    }
    for kind in NodeKind::ALL {
        let members: Vec<String> = (0..diagram.nodes.len())
            .filter(|&index| diagram.nodes[index].kind == kind)
            .map(|index| mermaid_id(diagram, index))
            .collect();
        if members.is_empty() {
            continue;
        }
        let palette = kind.palette();
        let _ = writeln!(
            out,
            "    classDef {} fill:{},stroke:{},color:{}",
            kind.class(),
            palette.fill,
            palette.stroke,
            palette.text
        );
        let _ = writeln!(out, "    class {} {}", members.join(","), kind.class());
    }
    for (index, arrow) in diagram.arrows.iter().enumerate() {
        if arrow.line == Line::Dashed {
            let _ = writeln!(out, "    linkStyle {index} stroke:{},color:{}", EDGE_DASHED_COLOR, EDGE_DASHED_COLOR);
        }
    }
    out
}

/// Mermaid node ids are positions, not step ids: `end` and ids starting with `o` or `x`
/// after a link break Mermaid's parser, and the step id is shown in the label anyway.
fn mermaid_id(diagram: &Diagram, index: usize) -> String {
    if diagram.nodes[index].kind == NodeKind::End { "stop".to_owned() } else { format!("s{index}") }
}

/// Text inside a quoted Mermaid label: quotes, pipes and brackets would end the label or the
/// link, `#` starts an entity and `<`, `>`, `&` are HTML in Mermaid's labels, so each becomes
/// one of Mermaid's `#code;` entities.
fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '&' => out.push_str("#amp;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '|' => out.push_str("#124;"),
            '[' => out.push_str("#91;"),
            ']' => out.push_str("#93;"),
            '{' => out.push_str("#123;"),
            '}' => out.push_str("#125;"),
            '(' => out.push_str("#40;"),
            ')' => out.push_str("#41;"),
            '`' => out.push_str("#96;"),
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// DOT

fn draw_dot(diagram: &Diagram) -> String {
    let font = "Helvetica,Arial,sans-serif";
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_quote(&diagram.workflow_id));
    let _ = writeln!(
        out,
        "    graph [label={}, labelloc=t, fontname={}, fontsize=16, rankdir=TB, nodesep=0.4, ranksep=0.5];",
        dot_quote(&diagram.title),
        dot_quote(font)
    );
    let _ = writeln!(
        out,
        "    node [fontname={}, fontsize=12, style=filled, penwidth=1.5, margin=\"0.15,0.06\"];",
        dot_quote(font)
    );
    let _ = writeln!(
        out,
        "    edge [fontname={}, fontsize=11, color={}, fontcolor={}, penwidth=1.3];",
        dot_quote(font),
        dot_quote(EDGE_COLOR),
        dot_quote(EDGE_COLOR)
    );
    for node in &diagram.nodes {
        let (shape, style) = match node.kind {
            NodeKind::Action => ("box", "filled"),
            NodeKind::Task => ("box", "rounded,filled"),
            NodeKind::Approval => ("hexagon", "filled"),
            NodeKind::Wait => ("ellipse", "filled"),
            NodeKind::Branch | NodeKind::Split => ("diamond", "filled"),
            NodeKind::Parallel => ("invtrapezium", "filled"),
            NodeKind::Join => ("trapezium", "filled"),
            // Not `doublecircle`: a circle grows with its widest line and dwarfs the rest.
            NodeKind::Goal => ("ellipse", "filled"),
            NodeKind::Exit => ("octagon", "filled"),
            NodeKind::Subflow => ("box", "filled"),
            NodeKind::End => ("circle", "filled"),
        };
        let palette = node.kind.palette();
        let label = node.lines().join("\n");
        let peripheries = if matches!(node.kind, NodeKind::Subflow | NodeKind::Goal) { ", peripheries=2" } else { "" };
        let _ = writeln!(
            out,
            "    {} [label={}, shape={shape}, style={}, fillcolor={}, color={}, fontcolor={}{peripheries}];",
            dot_quote(&node.id),
            dot_quote(&label),
            dot_quote(style),
            dot_quote(palette.fill),
            dot_quote(palette.stroke),
            dot_quote(palette.text)
        );
    }
    for arrow in &diagram.arrows {
        let mut attributes = Vec::new();
        if let Some(label) = &arrow.label {
            attributes.push(format!("label={}", dot_quote(label)));
        }
        if arrow.line == Line::Dashed {
            attributes.push("style=dashed".to_owned());
            attributes.push(format!("color={}", dot_quote(EDGE_DASHED_COLOR)));
            attributes.push(format!("fontcolor={}", dot_quote(EDGE_DASHED_COLOR)));
        }
        let attributes = if attributes.is_empty() { String::new() } else { format!(" [{}]", attributes.join(", ")) };
        let _ = writeln!(
            out,
            "    {} -> {}{attributes};",
            dot_quote(&diagram.nodes[arrow.from_index].id),
            dot_quote(&diagram.nodes[arrow.to_index].id)
        );
    }
    out.push_str("}\n");
    out
}

/// A DOT quoted string: `"` and `\` are escaped (a lone backslash would start one of
/// Graphviz's label escapes such as `\N`), and a newline becomes the centred-line escape `\n`.
fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// SVG

const FONT_FAMILY: &str = "Helvetica, Arial, sans-serif";
const ID_FONT_PX: f64 = 14.0;
const DETAIL_FONT_PX: f64 = 12.0;
const LABEL_FONT_PX: f64 = 12.0;
const LINE_HEIGHT_PX: f64 = 17.0;
const PAD_X_PX: f64 = 14.0;
const PAD_Y_PX: f64 = 9.0;
const MARGIN_PX: f64 = 20.0;
const TITLE_HEIGHT_PX: f64 = 34.0;
/// The font size layout-rs reserves room for an arrow label with. It assumes a character as
/// wide as the font is tall, twice what sans-serif needs, so a smaller size keeps labels from
/// pushing the nodes far apart while still leaving room for the text drawn at `LABEL_FONT_PX`.
const LABEL_LAYOUT_FONT_PX: usize = 8;

/// Estimated advance of one character of Helvetica/Arial, in ems. Nothing here can measure
/// text, so widths come from a small table; erring wide only costs some white space.
fn char_width_em(c: char) -> f64 {
    match c {
        'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' => 0.28,
        'f' | 't' | 'r' | ' ' | '(' | ')' | '[' | ']' | '-' => 0.36,
        'm' | 'w' | 'M' | 'W' => 0.86,
        'A'..='Z' => 0.70,
        '0'..='9' => 0.56,
        '=' | '<' | '>' | '+' | '%' => 0.62,
        _ => 0.57,
    }
}

fn text_width(text: &str, font_px: f64, bold: bool) -> f64 {
    let width: f64 = text.chars().map(char_width_em).sum::<f64>() * font_px;
    if bold { width * 1.08 } else { width }
}

/// The box layout-rs reserves for a node: the text block plus what the shape needs around it.
fn node_size(node: &Node) -> Point {
    if is_bar(node.kind) {
        let width = bar_text_width(node) + 2.0 * 18.0;
        return Point::new(width.max(120.0), LINE_HEIGHT_PX + 12.0);
    }
    let text_w = node_text_width(node);
    let text_h = LINE_HEIGHT_PX * (1 + node.detail.len()) as f64;
    let box_w = text_w + 2.0 * PAD_X_PX;
    let box_h = text_h + 2.0 * PAD_Y_PX;
    let (width, height) = match node.kind {
        NodeKind::Action | NodeKind::Task => (box_w, box_h),
        // Room for the double rule on either side.
        NodeKind::Subflow => (box_w + 16.0, box_h),
        // The pointed ends sit outside the text.
        NodeKind::Approval => (box_w + box_h * 0.7, box_h),
        NodeKind::Wait => (box_w + box_h * 0.5, box_h),
        NodeKind::Exit => (box_w + box_h * 0.4, box_h),
        // A text block of w×h fits in a diamond of 2w×2h.
        NodeKind::Branch | NodeKind::Split => (2.0 * text_w + 24.0, 2.0 * text_h + 12.0),
        // A text block fits in an ellipse √2 times its size; the goal's second ring needs 8px.
        NodeKind::Goal => (text_w * 1.42 + 24.0, text_h * 1.42 + 20.0),
        NodeKind::End => {
            let diameter = (text_w + 20.0).max(44.0);
            return Point::new(diameter, diameter);
        }
        NodeKind::Parallel | NodeKind::Join => unreachable!("bars are sized above"),
    };
    // A floor on the width keeps short ids from making slivers that arrows crowd into.
    Point::new(width.max(90.0), height)
}

fn node_text_width(node: &Node) -> f64 {
    let id_w = text_width(&node.id, ID_FONT_PX, true);
    node.detail.iter().map(|line| text_width(line, DETAIL_FONT_PX, false)).fold(id_w, f64::max)
}

/// Parallel and join are drawn as bars, like UML fork and join, with one line of text.
fn is_bar(kind: NodeKind) -> bool {
    matches!(kind, NodeKind::Parallel | NodeKind::Join)
}

const BAR_GAP_PX: f64 = 8.0;

fn bar_text_width(node: &Node) -> f64 {
    let detail: f64 = node.detail.iter().map(|line| text_width(line, DETAIL_FONT_PX, false) + BAR_GAP_PX).sum();
    text_width(&node.id, ID_FONT_PX, true) + detail
}

/// Marks the label of a dashed arrow on its way through layout-rs; `clean` drops control
/// characters from every label, so no label can start with it by itself.
const DASHED_LABEL_TAG: char = '\u{1}';

/// Receives layout-rs's draw calls and keeps only the geometry: where each node's box went,
/// where each arrow label went, and each arrow's Bézier path.
#[derive(Default)]
struct Canvas {
    /// (node index, top-left corner, size); the index travels in the element's `properties`.
    boxes: Vec<(usize, Point, Point)>,
    labels: Vec<(Point, String, Line)>,
    paths: Vec<DrawnPath>,
}

struct DrawnPath {
    /// layout-rs's form: the first pair is (start, control), each later pair (control, point).
    points: Vec<(Point, Point)>,
    line: Line,
    /// Arrowheads at (start, end); a back edge is routed reversed, with its head at the start.
    heads: (bool, bool),
}

impl RenderBackend for Canvas {
    fn draw_rect(&mut self, xy: Point, size: Point, _: &StyleAttr, properties: Option<String>, _: Option<ClipHandle>) {
        if let Some(index) = properties.and_then(|p| p.parse::<usize>().ok()) {
            self.boxes.push((index, xy, size));
        }
    }

    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_text(&mut self, xy: Point, text: &str, _: &StyleAttr) {
        // Nodes are boxes without text (their text is drawn from the `Diagram`), so any text
        // that arrives here is an arrow label, on the connector layout-rs made for it.
        // The label's own style cannot be read from `look`: layout-rs may move a label onto
        // another connector of the same arrow, keeping that connector's default look.
        match text.strip_prefix(DASHED_LABEL_TAG) {
            Some(text) => self.labels.push((xy, text.to_owned(), Line::Dashed)),
            None if !text.is_empty() => self.labels.push((xy, text.to_owned(), Line::Solid)),
            None => {}
        }
    }

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        dashed: bool,
        head: (bool, bool),
        _: &StyleAttr,
        _: Option<String>,
        _: &str,
    ) {
        let line = if dashed { Line::Dashed } else { Line::Solid };
        self.paths.push(DrawnPath { points: path.to_vec(), line, heads: head });
    }

    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

fn draw_svg(diagram: &Diagram, marks: &Marks) -> String {
    let mut graph = VisualGraph::new(Orientation::TopToBottom);
    let handles: Vec<_> = diagram
        .nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let element = Element::create_with_properties(
                ShapeKind::new_box(""),
                StyleAttr::simple(),
                Orientation::TopToBottom,
                node_size(node),
                index.to_string(),
            );
            graph.add_node(element)
        })
        .collect();
    for arrow in &diagram.arrows {
        // Only the font size matters to layout-rs here; colours are chosen when writing.
        let mut look = StyleAttr::simple();
        look.font_size = LABEL_LAYOUT_FONT_PX;
        let style = match arrow.line {
            Line::Solid => LineStyleKind::Normal,
            Line::Dashed => LineStyleKind::Dashed,
        };
        let label = match (&arrow.label, arrow.line) {
            (Some(label), Line::Dashed) => format!("{DASHED_LABEL_TAG}{label}"),
            (Some(label), Line::Solid) => label.clone(),
            (None, _) => String::new(),
        };
        let layout_arrow = LayoutArrow::new(LineEndKind::None, LineEndKind::Arrow, style, &label, &look, &None, &None);
        graph.add_edge(layout_arrow, handles[arrow.from_index], handles[arrow.to_index]);
    }
    let mut canvas = Canvas::default();
    if !diagram.nodes.is_empty() {
        graph.do_it(false, false, false, &mut canvas);
    }
    write_svg(diagram, &canvas, marks)
}

/// A node's final place: centre and size, in layout coordinates.
#[derive(Clone, Copy)]
struct Placed {
    center: Point,
    size: Point,
}

fn write_svg(diagram: &Diagram, canvas: &Canvas, marks: &Marks) -> String {
    let mut placed: Vec<Option<Placed>> = vec![None; diagram.nodes.len()];
    for &(index, xy, size) in &canvas.boxes {
        if let Some(slot) = placed.get_mut(index) {
            *slot = Some(Placed { center: Point::new(xy.x + size.x / 2.0, xy.y + size.y / 2.0), size });
        }
    }
    let paths: Vec<Vec<(Point, Point)>> =
        canvas.paths.iter().map(|path| clip_to_shapes(diagram, &placed, path)).collect();

    // The drawing's extent, so the picture can be moved to start at the margin.
    let mut min = Point::new(f64::MAX, f64::MAX);
    let mut max = Point::new(f64::MIN, f64::MIN);
    let mut grow = |point: Point| {
        min = Point::new(min.x.min(point.x), min.y.min(point.y));
        max = Point::new(max.x.max(point.x), max.y.max(point.y));
    };
    for node in placed.iter().flatten() {
        grow(Point::new(node.center.x - node.size.x / 2.0, node.center.y - node.size.y / 2.0));
        grow(Point::new(node.center.x + node.size.x / 2.0, node.center.y + node.size.y / 2.0));
    }
    for (at, text, _) in &canvas.labels {
        let half_w = text_width(text, LABEL_FONT_PX, false) / 2.0 + 4.0;
        grow(Point::new(at.x - half_w, at.y - 10.0));
        grow(Point::new(at.x + half_w, at.y + 10.0));
    }
    // A Bézier curve stays inside the hull of its control points.
    for path in &paths {
        for (a, b) in path {
            grow(*a);
            grow(*b);
        }
    }
    let subtitle_w = diagram.subtitle.as_deref().map_or(0.0, |subtitle| text_width(subtitle, 12.0, false) + 8.0);
    let title_w = text_width(&diagram.title, 16.0, true) + subtitle_w;
    if min.x > max.x {
        min = Point::new(0.0, 0.0);
        max = Point::new(0.0, 0.0);
    }
    let offset = Point::new(MARGIN_PX - min.x, MARGIN_PX + TITLE_HEIGHT_PX - min.y);
    let width = (max.x - min.x + 2.0 * MARGIN_PX).max(title_w + 2.0 * MARGIN_PX).ceil();
    let height = (max.y - min.y + 2.0 * MARGIN_PX + TITLE_HEIGHT_PX).ceil();
    let at = |point: Point| Point::new(point.x + offset.x, point.y + offset.y);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"{FONT_FAMILY}\">",
        w = num(width),
        h = num(height)
    );
    let _ = writeln!(out, "<title>{}</title>", escape_markup(&diagram.title));
    out.push_str("<style>\n");
    let _ = writeln!(out, ".id {{ font-size: {}px; font-weight: bold; }}", num(ID_FONT_PX));
    let _ = writeln!(out, ".detail {{ font-size: {}px; }}", num(DETAIL_FONT_PX));
    let _ = writeln!(out, ".label {{ font-size: {}px; }}", num(LABEL_FONT_PX));
    out.push_str("</style>\n<defs>\n");
    for line in [Line::Solid, Line::Dashed] {
        let _ = writeln!(
            out,
            "<marker id=\"head-{}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"10\" \
             markerHeight=\"10\" markerUnits=\"userSpaceOnUse\" orient=\"auto-start-reverse\">\
             <path d=\"M0,0 L10,5 L0,10 z\" fill=\"{}\"/></marker>",
            marker_name(line),
            line.color()
        );
    }
    out.push_str("</defs>\n");
    let _ = writeln!(out, "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" fill=\"{TEXT_COLOR}\"><tspan font-size=\"16px\" font-weight=\"bold\">{}</tspan>",
        num(MARGIN_PX),
        num(MARGIN_PX + 10.0),
        escape_markup(&diagram.title)
    );
    if let Some(subtitle) = &diagram.subtitle {
        let _ = write!(out, "<tspan dx=\"8\" font-size=\"12px\" fill=\"#64748b\">{}</tspan>", escape_markup(subtitle));
    }
    out.push_str("</text>\n");

    out.push_str("<g class=\"edges\" fill=\"none\" stroke-width=\"1.5\">\n");
    for (path, drawn) in paths.iter().zip(&canvas.paths) {
        // layout-rs always routes from one shape to another; a shorter path has nothing to draw.
        if path.len() < 2 {
            continue;
        }
        let line = drawn.line;
        let mut d = String::new();
        let start = at(path[0].0);
        let _ = write!(d, "M{},{}", num(start.x), num(start.y));
        for (index, pair) in path.iter().enumerate().skip(1) {
            let control = at(pair.0);
            let point = at(pair.1);
            if index == 1 {
                let first = at(path[0].1);
                let _ = write!(
                    d,
                    " C{},{} {},{} {},{}",
                    num(first.x),
                    num(first.y),
                    num(control.x),
                    num(control.y),
                    num(point.x),
                    num(point.y)
                );
            } else {
                let _ = write!(d, " S{},{} {},{}", num(control.x), num(control.y), num(point.x), num(point.y));
            }
        }
        let dash = if line == Line::Dashed { " stroke-dasharray=\"6,4\"" } else { "" };
        let start_head =
            if drawn.heads.0 { format!(" marker-start=\"url(#head-{})\"", marker_name(line)) } else { String::new() };
        let end_head =
            if drawn.heads.1 { format!(" marker-end=\"url(#head-{})\"", marker_name(line)) } else { String::new() };
        let _ = writeln!(out, "<path d=\"{d}\" stroke=\"{}\"{dash}{start_head}{end_head}/>", line.color());
    }
    out.push_str("</g>\n<g class=\"labels\">\n");
    for (point, text, line) in &canvas.labels {
        let center = at(*point);
        let half_w = text_width(text, LABEL_FONT_PX, false) / 2.0 + 4.0;
        let _ = writeln!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"18\" rx=\"4\" fill=\"#ffffff\" fill-opacity=\"0.92\"/>\
             <text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{}</text>",
            num(center.x - half_w),
            num(center.y - 9.0),
            num(2.0 * half_w),
            num(center.x),
            num(center.y + 4.0),
            line.color(),
            escape_markup(text)
        );
    }
    out.push_str("</g>\n<g class=\"nodes\">\n");
    for (node, place) in diagram.nodes.iter().zip(&placed) {
        let Some(place) = place else { continue };
        let place = Placed { center: at(place.center), size: place.size };
        write_node(&mut out, node, place);
    }
    out.push_str("</g>\n");
    if !marks.steps.is_empty() {
        out.push_str("<g class=\"marks\">\n");
        for (node, place) in diagram.nodes.iter().zip(&placed) {
            let (Some(place), Some(count)) = (place, marks.steps.get(&node.id)) else { continue };
            write_mark(&mut out, Placed { center: at(place.center), size: place.size }, *count);
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

/// How far the approval hexagon's points stick out past its flat top and bottom.
fn approval_inset(size: Point) -> f64 {
    size.y * 0.35
}

/// How much of each corner the exit octagon cuts off, along each side.
fn exit_cut(size: Point) -> f64 {
    size.y * 0.29
}

fn marker_name(line: Line) -> &'static str {
    match line {
        Line::Solid => "solid",
        Line::Dashed => "dashed",
    }
}

fn write_node(out: &mut String, node: &Node, place: Placed) {
    let palette = node.kind.palette();
    let Placed { center: c, size } = place;
    let (left, top, right, bottom) = (c.x - size.x / 2.0, c.y - size.y / 2.0, c.x + size.x / 2.0, c.y + size.y / 2.0);
    let paint = format!("fill=\"{}\" stroke=\"{}\" stroke-width=\"1.5\"", palette.fill, palette.stroke);
    let rect = |rx: f64| {
        format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{}\" {paint}/>",
            num(left),
            num(top),
            num(size.x),
            num(size.y),
            num(rx)
        )
    };
    let polygon = |points: &[(f64, f64)]| {
        let points: Vec<String> = points.iter().map(|(x, y)| format!("{},{}", num(*x), num(*y))).collect();
        format!("<polygon points=\"{}\" {paint}/>", points.join(" "))
    };
    let _ = writeln!(out, "<g class=\"node {}\">", node.kind.class());
    let shape = match node.kind {
        NodeKind::Action => rect(0.0),
        NodeKind::Task => rect(10.0),
        NodeKind::Wait => rect(size.y / 2.0),
        NodeKind::Approval => {
            let inset = approval_inset(size);
            polygon(&[
                (left, c.y),
                (left + inset, top),
                (right - inset, top),
                (right, c.y),
                (right - inset, bottom),
                (left + inset, bottom),
            ])
        }
        NodeKind::Branch | NodeKind::Split => polygon(&[(c.x, top), (right, c.y), (c.x, bottom), (left, c.y)]),
        NodeKind::Exit => {
            let cut = exit_cut(size);
            polygon(&[
                (left + cut, top),
                (right - cut, top),
                (right, top + cut),
                (right, bottom - cut),
                (right - cut, bottom),
                (left + cut, bottom),
                (left, bottom - cut),
                (left, top + cut),
            ])
        }
        NodeKind::Parallel | NodeKind::Join => rect(4.0),
        NodeKind::Subflow => {
            let mut shape = rect(0.0);
            for x in [left + 8.0, right - 8.0] {
                let _ = write!(
                    shape,
                    "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                    num(top),
                    num(bottom),
                    palette.stroke,
                    x = num(x)
                );
            }
            shape
        }
        NodeKind::Goal => format!(
            "<ellipse cx=\"{x}\" cy=\"{y}\" rx=\"{}\" ry=\"{}\" fill=\"none\" stroke=\"{s}\" stroke-width=\"1.5\"/>\
             <ellipse cx=\"{x}\" cy=\"{y}\" rx=\"{}\" ry=\"{}\" {paint}/>",
            num(size.x / 2.0),
            num(size.y / 2.0),
            num(size.x / 2.0 - 4.0),
            num(size.y / 2.0 - 4.0),
            x = num(c.x),
            y = num(c.y),
            s = palette.stroke
        ),
        NodeKind::End => format!(
            "<ellipse cx=\"{}\" cy=\"{}\" rx=\"{}\" ry=\"{}\" {paint}/>",
            num(c.x),
            num(c.y),
            num(size.x / 2.0),
            num(size.y / 2.0)
        ),
    };
    out.push_str(&shape);
    out.push('\n');

    // The fill is an attribute on each text, not a stylesheet rule: a rule would win over it.
    let fill = format!(" fill=\"{}\"", palette.text);
    // One `<text>` per node: the id first, in bold, then the detail lines under it.
    if is_bar(node.kind) {
        // Bars hold one line, the id and the detail side by side, centred as a whole.
        let baseline = c.y + ID_FONT_PX * 0.36;
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\"{fill}><tspan class=\"id\">{}</tspan>",
            num(c.x),
            num(baseline),
            escape_markup(&node.id)
        );
        for line in &node.detail {
            let _ = write!(out, "<tspan class=\"detail\" dx=\"{}\">{}</tspan>", num(BAR_GAP_PX), escape_markup(line));
        }
        out.push_str("</text>\n");
    } else {
        let line_count = 1 + node.detail.len();
        let first_center = c.y - LINE_HEIGHT_PX * (line_count as f64 - 1.0) / 2.0;
        let _ = write!(out, "<text text-anchor=\"middle\"{fill}>");
        let _ = write!(
            out,
            "<tspan class=\"id\" x=\"{}\" y=\"{}\">{}</tspan>",
            num(c.x),
            num(first_center + ID_FONT_PX * 0.36),
            escape_markup(&node.id)
        );
        for (index, line) in node.detail.iter().enumerate() {
            let center = first_center + LINE_HEIGHT_PX * (index + 1) as f64;
            let _ = write!(
                out,
                "<tspan class=\"detail\" x=\"{}\" y=\"{}\">{}</tspan>",
                num(c.x),
                num(center + DETAIL_FONT_PX * 0.36),
                escape_markup(line)
            );
        }
        out.push_str("</text>\n");
    }
    out.push_str("</g>\n");
}

const MARK_COLOR: &str = "#ea580c";

/// A highlight ring around a marked node and, with a count, a badge on its top-right corner.
fn write_mark(out: &mut String, place: Placed, count: Option<u64>) {
    let Placed { center: c, size } = place;
    let (left, top) = (c.x - size.x / 2.0 - 5.0, c.y - size.y / 2.0 - 5.0);
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"8\" fill=\"none\" stroke=\"{MARK_COLOR}\" \
         stroke-width=\"3\"/>",
        num(left),
        num(top),
        num(size.x + 10.0),
        num(size.y + 10.0)
    );
    if let Some(count) = count {
        let text = count.to_string();
        let width = text_width(&text, 12.0, true) + 12.0;
        let (x, y) = (c.x + size.x / 2.0 + 5.0 - width / 2.0, top);
        let _ = writeln!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"20\" rx=\"10\" fill=\"{MARK_COLOR}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12px\" font-weight=\"bold\" \
             fill=\"#ffffff\">{text}</text>",
            num(x - width / 2.0),
            num(y - 10.0),
            num(width),
            num(x),
            num(y + 4.0)
        );
    }
}

/// layout-rs ends arrows on a node's bounding box; for the shapes that do not fill their box
/// (diamond, ellipse, pointed ends) this moves each end in along the arrow's line to the outline,
/// so heads touch the shape instead of floating beside it.
fn clip_to_shapes(diagram: &Diagram, placed: &[Option<Placed>], path: &DrawnPath) -> Vec<(Point, Point)> {
    let mut points = path.points.clone();
    let Some(last_index) = points.len().checked_sub(1) else { return points };
    if last_index == 0 {
        return points;
    }
    points[0].0 = clip_point(diagram, placed, points[0].0);
    points[last_index].1 = clip_point(diagram, placed, points[last_index].1);
    points
}

fn clip_point(diagram: &Diagram, placed: &[Option<Placed>], point: Point) -> Point {
    for (node, place) in diagram.nodes.iter().zip(placed) {
        let Some(Placed { center: c, size }) = *place else { continue };
        let (half_w, half_h) = (size.x / 2.0, size.y / 2.0);
        let (dx, dy) = (point.x - c.x, point.y - c.y);
        let on_box = dx.abs() <= half_w + 0.5 && dy.abs() <= half_h + 0.5;
        if !on_box || (dx == 0.0 && dy == 0.0) {
            continue;
        }
        let (ax, ay) = (dx.abs(), dy.abs());
        // How far out `point` is relative to the outline (1 on it), from the centre along the
        // same ray. The polygons are symmetric, so each is a few `a·|dx| + b·|dy| ≤ 1` sides.
        let reach = match node.kind {
            NodeKind::Branch | NodeKind::Split => ax / half_w + ay / half_h,
            NodeKind::Approval => (ax + approval_inset(size) * ay / half_h) / half_w,
            NodeKind::Exit => (ax + ay) / (half_w + half_h - exit_cut(size)),
            NodeKind::Goal | NodeKind::End => ((dx / half_w).powi(2) + (dy / half_h).powi(2)).sqrt(),
            _ => 1.0,
        };
        let scale = 1.0 / reach.max(1.0);
        return Point::new(c.x + dx * scale, c.y + dy * scale);
    }
    point
}

/// Text for XML or HTML character data and quoted attribute values (the web UI's pages use
/// it too). The apostrophe is a numeric reference, which both languages read.
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A coordinate with at most one decimal: enough for a screen, and short, stable output.
fn num(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded == rounded.trunc() { format!("{}", rounded as i64) } else { format!("{rounded:.1}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmark_core::{Source, compile};

    fn workflow() -> Workflow {
        let source = "id: t\nsubject: item\nroles: { writer: { team: content } }\nsteps:\n  - id: draft\n    \
                      task: { title: Draft, responsible: writer, accountable: writer }\n";
        compile(&Source::new("t.yaml", source)).workflow.expect("valid")
    }

    #[test]
    fn marks_ring_their_steps_and_show_counts() {
        let workflow = workflow();
        let plain = svg(&workflow, &Marks::default());
        assert!(!plain.contains("class=\"marks\""), "no marks, no ring");
        let mut marks = Marks::default();
        marks.steps.insert("draft".to_owned(), Some(12_345));
        marks.steps.insert("nowhere".to_owned(), Some(7));
        let marked = svg(&workflow, &marks);
        assert_eq!(marked.matches(MARK_COLOR).count(), 2, "one ring and one badge: {marked}");
        assert!(marked.contains(">12345</text>"));
        assert!(!marked.contains(">7</text>"), "a step the workflow does not have is not drawn");
        marks.steps.insert("draft".to_owned(), None);
        assert!(!svg(&workflow, &marks).contains(">12345<"), "a mark without a count has no badge");
        assert_eq!(plain, svg(&workflow, &Marks::default()), "same input, same bytes");
    }
}
