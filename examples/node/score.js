// Score labeled examples against a labelwatch server from Node.js, with nothing but the .proto.
//
//   npm install
//   node score.js 127.0.0.1:50051 examples.jsonl    (one {"id","text"|"probabilities","labels"} a line)
//
// Prints one JSON result a line, as the server returns it. When every line gives
// "probabilities", the file goes as one ScoreBatch call instead: one packed float32 tensor,
// the tags in CSR form; its arrays are turned back into one result a line
// ({"id","label_quality","is_issue","issues":[{"label","class_index","kind",...}],"model_version"}).
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const PROTO = "labelwatch_proto/labelwatch/v1/labelwatch.proto";

function toExample(row) {
  const example = { id: row.id, labels: row.labels || [], annotator_id: row.annotator_id || "" };
  if (row.text !== undefined) example.text = row.text;
  if (row.features !== undefined) example.features = { values: row.features };
  if (row.probabilities !== undefined) example.probabilities = { values: row.probabilities };
  return example;
}

function fail(err) {
  console.error(`labelwatch: ${err.code} ${err.details}`);
  process.exit(1);
}

// rows -> ScoreBatchRequest: values are rows x cols float32, little-endian, row-major
function toBatch(rows, classNames) {
  const index = new Map(classNames.map((name, k) => [name, k]));
  const cols = rows[0].probabilities.length;
  const values = Buffer.alloc(rows.length * cols * 4);
  const indptr = [0];
  const indices = [];
  rows.forEach((row, i) => {
    row.probabilities.forEach((p, k) => values.writeFloatLE(p, (i * cols + k) * 4));
    indices.push(...new Set((row.labels || []).map((name) => index.get(name))));
    indptr.push(indices.length);
  });
  return {
    ids: rows.map((row) => row.id),
    kind: "TENSOR_KIND_PROBABILITIES",
    dtype: "TENSOR_DTYPE_FLOAT32",
    rows: rows.length,
    cols,
    values,
    tag_indptr: indptr,
    tag_indices: indices,
    annotator_ids: rows.some((row) => row.annotator_id) ? rows.map((r) => r.annotator_id || "") : [],
  };
}

// ScoreBatchResponse arrays -> one result object per example
function fromBatch(rows, response, classNames) {
  const chances = response.issue_error_probability;
  return rows.map((row, i) => {
    const issues = [];
    for (let j = response.issue_indptr[i]; j < response.issue_indptr[i + 1]; j++) {
      const k = response.issue_class_index[j];
      issues.push({
        label: classNames[k],
        class_index: k,
        kind: response.issue_kind[j],
        probability: response.issue_probability[j],
        threshold: response.issue_threshold[j],
        error_probability: chances.length ? chances[j] : null,
      });
    }
    return {
      id: row.id,
      label_quality: response.label_quality[i],
      is_issue: issues.length > 0,
      issues,
      model_version: response.model_version,
    };
  });
}

function main() {
  const [target, input] = process.argv.slice(2);
  if (!target || !input) {
    console.error("usage: node score.js HOST:PORT examples.jsonl");
    process.exit(2);
  }
  const definition = protoLoader.loadSync(PROTO, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    enums: String,
    longs: Number,
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).labelwatch.v1;
  const client = new v1.LabelQuality(target, grpc.credentials.createInsecure());
  const rows = fs.readFileSync(input, "utf8").split("\n").filter((l) => l.trim()).map(JSON.parse);
  const deadline = new Date(Date.now() + 30000);
  const score = () =>
    client.Score({ examples: rows.map(toExample) }, { deadline }, (err, response) => {
      if (err) fail(err);
      for (const result of response.results) console.log(JSON.stringify(result));
      client.close();
    });
  if (!(rows.length > 0 && rows.every((row) => Array.isArray(row.probabilities)))) {
    score();
    return;
  }
  client.GetModelInfo({}, { deadline }, (err, info) => {
    if (err) fail(err);
    const known = new Set(info.class_names);
    if (!rows.every((row) => (row.labels || []).every((name) => known.has(name)))) {
      score(); // Score's message names the example and the unknown class
      return;
    }
    client.ScoreBatch(toBatch(rows, info.class_names), { deadline }, (err2, response) => {
      if (err2) fail(err2);
      for (const result of fromBatch(rows, response, info.class_names)) {
        console.log(JSON.stringify(result));
      }
      client.close();
    });
  });
}

main();
