// Tiny --key value argument parser shared by the scripts.
export function parseArgs(argv, required) {
  const args = {};
  for (let i = 2; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--")) throw new Error(`unexpected argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  const missing = required.filter((k) => args[k] === undefined);
  if (missing.length) throw new Error(`missing arguments: ${missing.map((k) => "--" + k).join(" ")}`);
  return args;
}
