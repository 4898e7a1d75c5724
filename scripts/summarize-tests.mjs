// Prints the plain closing line CI reads ("N passed, N failed, N skipped") from
// vitest's JSON report. A skipped or todo test is never counted as passed, and a
// run that executed no test fails.
import { readFileSync } from "node:fs";

const report = JSON.parse(readFileSync(process.argv[2], "utf8"));
const passed = report.numPassedTests ?? 0;
// A file that failed without a failed test (an import error, a failing beforeAll
// before any test ran) counts once; otherwise failed tests are counted, not the
// describe blocks around them.
const brokenFiles = (report.testResults ?? []).filter((f) => f.status === "failed" && !(f.assertionResults ?? []).some((a) => a.status === "failed")).length;
const failed = (report.numFailedTests ?? 0) + brokenFiles;
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
