/**
 * Bad input from an operator or a caller: reported as one line, changes
 * nothing. Messages quote what was given, so control characters in it are
 * escaped here: a name with a newline must not split or forge the report.
 */
export class InputError extends Error {
  override name = "InputError";
  constructor(message: string) {
    super(message.replace(/[\u0000-\u001f\u007f]/g, (c) =>
      c === "\n" ? "\\n" : c === "\t" ? "\\t" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`));
  }
}
