// Compiles Registrar.sol with the pinned solc-js into Registrar.json (ABI + bytecode).
//
//   node contracts/build.mjs              writes contracts/Registrar.json
//   node contracts/build.mjs --out FILE   writes FILE instead
//
// The output is deterministic: tests/test_contract_build.py rebuilds it and compares bytes.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// solc-js is CommonJS; resolve it from the repository's node_modules.
const solc = createRequire(import.meta.url)("solc");

const EVM_VERSION = "petersburg"; // the Jami chain stops at Constantinople/Petersburg

function parseOut(argv) {
  const i = argv.indexOf("--out");
  if (i === -1) return join(here, "Registrar.json");
  if (i + 1 >= argv.length) throw new Error("--out needs a file name");
  return argv[i + 1];
}

const input = {
  language: "Solidity",
  sources: { "Registrar.sol": { content: readFileSync(join(here, "Registrar.sol"), "utf8") } },
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    // No metadata hash in the bytecode, so the output does not depend on file paths or comments.
    metadata: { bytecodeHash: "none" },
    outputSelection: { "Registrar.sol": { Registrar: ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const diagnostics = output.errors ?? [];
// The ABI names parameters after functions (`name`, `owner`, `addr`...), so solc's shadowing
// warnings are expected; everything else is shown.
const SHADOWING = "This declaration shadows an existing declaration.";
for (const d of diagnostics) {
  if (d.severity !== "error" && d.message === SHADOWING) continue;
  process.stderr.write(d.formattedMessage ?? `${d.message}\n`);
}
if (diagnostics.some((d) => d.severity === "error")) {
  process.stderr.write("Registrar.sol failed to compile\n");
  process.exit(1);
}

const compiled = output.contracts?.["Registrar.sol"]?.Registrar;
if (!compiled?.evm?.bytecode?.object) {
  process.stderr.write("solc produced no bytecode for Registrar\n");
  process.exit(1);
}

const artifact = {
  contractName: "Registrar",
  compiler: `solc-js ${solc.version()}`,
  evmVersion: EVM_VERSION,
  abi: compiled.abi,
  bytecode: `0x${compiled.evm.bytecode.object}`,
};
writeFileSync(parseOut(process.argv.slice(2)), `${JSON.stringify(artifact, null, 2)}\n`);
