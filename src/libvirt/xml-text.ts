// XML edited as text: where each element starts and ends, and elements
// spliced in and out so that every other byte keeps its place. The scanner is
// only for text that XMLValidator has accepted: it does not check
// well-formedness itself, it only has to skip what may hide a '<' or '>'
// (comments, CDATA, processing instructions, quoted attribute values).

export interface ElementSpan {
  name: string;
  /** Offset of the '<' of the start tag. */
  start: number;
  /** Offset just after the start tag's '>'. */
  openEnd: number;
  selfClosing: boolean;
  /** Offset of the end tag's '<' (openEnd when self-closing). */
  closeStart: number;
  /** Offset just after the element (after the end tag, or the start tag when self-closing). */
  end: number;
  children: ElementSpan[];
}

const NAME_END = /[\s/>]/;

function skipPast(text: string, from: number, terminator: string): number {
  const at = text.indexOf(terminator, from);
  if (at < 0) throw new Error(`unterminated markup (no ${terminator})`);
  return at + terminator.length;
}

/** Offset just after the '>' that ends the start tag beginning at `from`; quotes may hide '>'. */
function startTagEnd(text: string, from: number): number {
  let quote = "";
  for (let i = from; i < text.length; i++) {
    const c = text[i]!;
    if (quote) { if (c === quote) quote = ""; }
    else if (c === '"' || c === "'") quote = c;
    else if (c === ">") return i + 1;
  }
  throw new Error("unterminated start tag");
}

/** The document's root element with all its descendants' positions. */
export function scanElements(text: string): ElementSpan {
  const open: ElementSpan[] = [];
  let root: ElementSpan | undefined;
  let i = 0;
  while ((i = text.indexOf("<", i)) >= 0) {
    if (text.startsWith("<!--", i)) i = skipPast(text, i + 4, "-->");
    else if (text.startsWith("<![CDATA[", i)) i = skipPast(text, i + 9, "]]>");
    else if (text.startsWith("<?", i) || text.startsWith("<!", i)) i = skipPast(text, i + 2, text[i + 1] === "?" ? "?>" : ">");
    else if (text[i + 1] === "/") {
      const element = open.pop();
      if (!element) throw new Error("end tag without start tag");
      element.closeStart = i;
      element.end = i = skipPast(text, i, ">");
    } else {
      let nameEnd = i + 1;
      while (nameEnd < text.length && !NAME_END.test(text[nameEnd]!)) nameEnd++;
      const openEnd = startTagEnd(text, nameEnd);
      const selfClosing = text[openEnd - 2] === "/";
      const element: ElementSpan = {
        name: text.slice(i + 1, nameEnd), start: i, openEnd, selfClosing, closeStart: openEnd, end: openEnd, children: [],
      };
      const parent = open.at(-1);
      if (parent) parent.children.push(element);
      else root ??= element;
      if (!selfClosing) open.push(element);
      i = openEnd;
    }
  }
  if (!root || open.length) throw new Error("no complete root element");
  return root;
}

// ---- splicing -----------------------------------------------------------------

/** An element whose position is known (the scanner's, or anything carrying its spans). */
export interface Placed {
  name: string;
  span: ElementSpan;
  children: Placed[];
}

/** Renders the new element: `indent` before every line but the first, `unit` per level, lines ended by `newline`. */
export type Render = (indent: string, unit: string, newline: string) => string;

const splice = (text: string, from: number, to: number, insert: string) => text.slice(0, from) + insert + text.slice(to);
const isBlank = (s: string) => /^[ \t\r\n]*$/.test(s);

/** The whitespace just before `offset`. */
function spaceBefore(text: string, offset: number): string {
  let i = offset;
  while (i > 0 && " \t\r\n".includes(text[i - 1]!)) i--;
  return text.slice(i, offset);
}

/** The indentation of the line an element starts (none when it does not start a line). */
function indentOf(text: string, el: Placed): string {
  const space = spaceBefore(text, el.span.start);
  return space.includes("\n") ? space.slice(space.lastIndexOf("\n") + 1) : "";
}

/**
 * The text with a new element in `parent`, right after `after` (or first,
 * without it), preceded by the whitespace that precedes its sibling and
 * indented as that sibling is. Into an element without element children
 * (`<metadata/>`, `<devices></devices>`) it goes right before the end tag with
 * nothing around it: that is how removeElement tells such an element, which
 * stays, from one that came with the new element (which always has whitespace
 * before its end tag, and goes with it).
 */
export function insertElement(text: string, parent: Placed, render: Render, after?: Placed): string {
  const { span } = parent;
  const sibling = after ?? parent.children[0];
  if (!sibling) {
    const fragment = render(`${indentOf(text, parent)}  `, "  ", "\n");
    if (!span.selfClosing) return splice(text, span.closeStart, span.closeStart, fragment);
    // `<metadata />` becomes `<metadata >…</metadata>`; removal turns it back.
    return splice(text, span.start, span.end, `${text.slice(span.start, span.openEnd - 2)}>${fragment}</${parent.name}>`);
  }
  const space = spaceBefore(text, sibling.span.start);
  const indent = indentOf(text, sibling);
  const outer = indentOf(text, parent);
  const unit = indent.length > outer.length && indent.startsWith(outer) ? indent.slice(outer.length) : "  ";
  const at = after ? after.span.end : span.openEnd;
  return splice(text, at, at, space + render(indent, unit, space.includes("\r\n") ? "\r\n" : "\n"));
}

/**
 * The text without the last element of `path` (root … parent, element) and the
 * whitespace insertElement put before it. A parent left without elements goes
 * too when it came with the element, or takes its original form again
 * (`<metadata/>`) when it did not. The root never goes.
 */
export function removeElement(text: string, path: Placed[]): string {
  const el = path.at(-1)!;
  const parent = path.at(-2)!;
  const { span } = parent;
  const space = spaceBefore(text, el.span.start);
  const only = parent.children.length === 1;
  if (only && el.span.end === span.closeStart) {
    if (el.span.start === span.openEnd) return splice(text, span.start, span.end, `${text.slice(span.start, span.openEnd - 1)}/>`);
    return splice(text, el.span.start, el.span.end, "");
  }
  const rest = text.slice(span.openEnd, el.span.start - space.length) + text.slice(el.span.end, span.closeStart);
  if (only && path.length > 2 && isBlank(rest)) return removeElement(text, path.slice(0, -1));
  return splice(text, el.span.start - space.length, el.span.end, "");
}
