// The unit tests' kernel is the reconciler's own model of a successful batch.
export { simulate as applyToModel } from "../../src/dataplane/simulate.js";
