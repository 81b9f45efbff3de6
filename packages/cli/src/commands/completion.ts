/**
 * `oarcloud completion bash|zsh`: a completion script made from the command tree itself,
 * so it never drifts from the commands: subcommands and options at every level.
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from '@oarcloud/common';
import type { Ctx } from '../context.js';

interface Node {
  path: string;
  subs: string[];
  options: string[];
}

function walk(cmd: Command, prefix: string[], out: Node[]): void {
  const subs = cmd.commands.filter((c) => c.name() !== 'hook' && c.name() !== 'help');
  const options = cmd.options.flatMap((o) => [o.long, o.short].filter((x): x is string => !!x));
  out.push({ path: prefix.join(' '), subs: subs.map((c) => c.name()), options: [...options, '--help'] });
  for (const c of subs) walk(c, [...prefix, c.name()], out);
}

export function bashCompletion(program: Command): string {
  const nodes: Node[] = [];
  walk(program, [], nodes);
  const cases = nodes.map((n) => `    "${n.path}") words_="${[...n.subs, ...n.options].join(' ')}" ;;`).join('\n');
  return `# bash completion for oarcloud: eval "$(oarcloud completion bash)" (e.g. in ~/.bashrc)
_oarcloud() {
  local cur path_ w i words_
  cur="\${COMP_WORDS[COMP_CWORD]}"
  path_=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    [[ $w == -* ]] && continue
    case "\${path_:+$path_ }$w" in
${nodes.map((n) => n.path).filter(Boolean).map((p) => `      "${p}") path_="${p}" ;;`).join('\n')}
    esac
  done
  case "$path_" in
${cases}
    *) words_="" ;;
  esac
  COMPREPLY=($(compgen -W "$words_" -- "$cur"))
}
complete -o default -F _oarcloud oarcloud
`;
}

export function zshCompletion(program: Command): string {
  return `#compdef oarcloud
# zsh completion for oarcloud: eval "$(oarcloud completion zsh)" (e.g. in ~/.zshrc)
autoload -U +X bashcompinit && bashcompinit
${bashCompletion(program)}`;
}

export function registerCompletionCommand(program: Command, ctx: Ctx): void {
  program
    .command('completion')
    .description('Print a shell completion script (bash or zsh)')
    .argument('<shell>', 'bash or zsh')
    .addHelpText('after', '\nExamples:\n  eval "$(oarcloud completion bash)"      # in ~/.bashrc\n  eval "$(oarcloud completion zsh)"       # in ~/.zshrc')
    .action((shell: string) => {
      if (shell === 'bash') ctx.out.out(bashCompletion(program));
      else if (shell === 'zsh') ctx.out.out(zshCompletion(program));
      else throw new InvalidArgumentError(`unknown shell ${JSON.stringify(shell)}: expected bash or zsh`);
    });
}
