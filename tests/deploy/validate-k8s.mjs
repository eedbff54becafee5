// Validates Kubernetes manifests against the API's OpenAPI schemas, offline:
//   node tests/deploy/validate-k8s.mjs deploy/kubernetes/*.yaml
// 1. Each document's apiVersion/kind must be a built-in kind (kubernetes-models, generated from
//    the Kubernetes OpenAPI spec); its validate() checks types, formats, enums and required
//    fields (ajv, compiled from the schemas).
// 2. Like `kubeconform -strict`: a field the schema does not define is an error (typos such as
//    `replica:` or `periodSecond:` pass the OpenAPI schemas, which allow extra properties). The
//    field lists come from the package's type declarations (.d.ts), generated from the same spec.
// kustomization.yaml (not an API object) is checked for its resources list only.
// Exit 0 when every document passes; one line per problem otherwise.
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";

const here = path.dirname(new URL(import.meta.url).pathname);
const nm = path.join(here, "node_modules");
const pkgVersion = JSON.parse(fs.readFileSync(path.join(nm, "kubernetes-models/package.json"))).version;

// --- field lists from the .d.ts files: interface name -> { prop: type text } ---------------
const ifaces = new Map();
const aliases = new Map();
function walk(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p);
    else if (e.name.endsWith(".d.ts")) parseDts(fs.readFileSync(p, "utf8"));
  }
}
function parseDts(src) {
  src = src.replace(/\/\*[\s\S]*?\*\//g, "");
  for (const m of src.matchAll(/export type \{([^}]*)\}/g))
    for (const part of m[1].split(",")) {
      const a = part.trim().match(/^(\w+) as (\w+)$/);
      if (a) aliases.set(a[2], a[1]);
    }
  const re = /export interface (\w+)[^{]*\{/g;
  let m;
  while ((m = re.exec(src))) {
    // the body, up to the matching brace
    let depth = 1, i = re.lastIndex;
    while (depth > 0 && i < src.length) { if (src[i] === "{") depth++; else if (src[i] === "}") depth--; i++; }
    const body = src.slice(re.lastIndex, i - 1);
    const props = {};
    // top-level properties only: "name"?: TYPE;  (TYPE may span lines with nested braces)
    let j = 0, d = 0, start = 0;
    const stmts = [];
    for (; j < body.length; j++) {
      const c = body[j];
      if (c === "{" || c === "<" || c === "(") d++;
      else if (c === "}" || c === ">" || c === ")") d--;
      else if (c === ";" && d === 0) { stmts.push(body.slice(start, j)); start = j + 1; }
    }
    for (const s of stmts) {
      const pm = s.trim().match(/^"([^"]+)"\??:\s*([\s\S]*)$/);
      if (pm) props[pm[1]] = pm[2].trim();
    }
    ifaces.set(m[1], props);
  }
}
walk(path.join(nm, "kubernetes-models"));
walk(path.join(nm, "@kubernetes-models/apimachinery"));
function iface(name) {
  for (let k = 0; k < 5 && name && !ifaces.has(name); k++) name = aliases.get(name);
  return name ? ifaces.get(name) : undefined;
}
// Checks `value` against the type text `t`; reports unknown fields with their path.
function strict(value, t, where, errs) {
  if (value === null || typeof value !== "object") return;
  t = t.replace(/\s*\|\s*undefined$/, "").trim();
  let m;
  if ((m = t.match(/^Array<([\s\S]*)>$/))) {
    if (Array.isArray(value)) value.forEach((v, i) => strict(v, m[1], `${where}[${i}]`, errs));
    return;
  }
  if ((m = t.match(/^\{\s*\[key: string\]:\s*([\s\S]*?);?\s*\}$/))) {
    for (const [k, v] of Object.entries(value)) strict(v, m[1], `${where}.${k}`, errs);
    return;
  }
  const props = /^\w+$/.test(t) ? iface(t) : undefined;
  if (!props || Array.isArray(value)) return;          // primitives, IntOrString, Quantity, ...
  for (const [k, v] of Object.entries(value)) {
    if (!(k in props)) errs.push(`${where}.${k}: unknown field (not in the ${t.replace(/^I(IoK8s)?/, "")} schema)`);
    else strict(v, props[k], `${where}.${k}`, errs);
  }
}

// --- the documents ---------------------------------------------------------------------------
let failed = 0, checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
  for (const [n, doc] of docs.entries()) {
    const where = `${file}#${n + 1}`;
    if (doc.errors.length) { console.log(`${where}: YAML: ${doc.errors[0].message}`); failed++; continue; }
    const obj = doc.toJS();
    if (obj == null) continue;
    if (obj.kind === "Kustomization") {
      const missing = (obj.resources || []).filter((r) => !fs.existsSync(path.join(path.dirname(file), r)));
      if (missing.length) { console.log(`${where}: resources not found: ${missing.join(", ")}`); failed++; }
      else console.log(`ok   ${where} Kustomization (${(obj.resources || []).length} resources)`);
      checked++;
      continue;
    }
    const [group, version] = String(obj.apiVersion || "").includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
    const mod = path.join("kubernetes-models", group, version || "", String(obj.kind));
    let Model;
    try { Model = (await import(mod))[obj.kind]; } catch { Model = undefined; }
    if (!Model) { console.log(`FAIL ${where}: unknown apiVersion/kind ${obj.apiVersion} ${obj.kind}`); failed++; continue; }
    const errs = [];
    try { new Model(obj).validate(); } catch (e) { errs.push(String(e.message || e)); }
    const dts = iface(`I${obj.kind}`) ? `I${obj.kind}` : undefined;
    if (dts) strict(obj, dts, "", errs);
    if (!obj.metadata || !obj.metadata.name) errs.push("metadata.name: required");
    checked++;
    if (errs.length) { failed++; for (const e of errs) console.log(`FAIL ${where} ${obj.kind} ${obj.metadata?.name}: ${e}`); }
    else console.log(`ok   ${where} ${obj.apiVersion} ${obj.kind} ${obj.metadata.name}`);
  }
}
console.log(`validate-k8s: ${checked} documents, ${failed} failed (kubernetes-models ${pkgVersion}, strict fields from ${ifaces.size} type declarations)`);
process.exit(failed ? 1 : 0);
