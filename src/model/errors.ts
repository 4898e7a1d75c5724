/** Bad input from an operator or a caller: reported as one line, changes nothing. */
export class InputError extends Error {
  override name = "InputError";
}
