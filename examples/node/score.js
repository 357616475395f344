// Score labeled examples against a labelwatch server from Node.js, with nothing but the .proto.
//
//   npm install
//   node score.js 127.0.0.1:50051 examples.jsonl    (one {"id","text"|"probabilities","labels"} a line)
//
// Prints one JSON result a line, as the server returns it.
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
  client.Score({ examples: rows.map(toExample) }, { deadline }, (err, response) => {
    if (err) {
      console.error(`labelwatch: ${err.code} ${err.details}`);
      process.exit(1);
    }
    for (const result of response.results) console.log(JSON.stringify(result));
    client.close();
  });
}

main();
