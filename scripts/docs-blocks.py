#!/usr/bin/env python3
"""scripts/docs-blocks.py: the Markdown side of scripts/docs-diagrams.sh and test/scripts/docs.sh.

Generated blocks.  In docs/*.md a block between

    <!-- diagram: saga.diagram('order_flow') -->
    ```mermaid
    ...
    ```
    <!-- /diagram -->

holds the output of the SQL expression in the opening marker (a call of saga.diagram,
saga.flow_diagram or saga.timeline), fenced as `dot` when it starts with "digraph", else as
`mermaid`.  Subcommands:

    list FILE...               one line per marked block: <file>\t<n>\t<expression>
    apply OUTDIR FILE...       rewrite each block with OUTDIR/<k>.out (k counts blocks over all
                               files, from 0, in the order `list` prints them)
    check OUTDIR FILE...       compare instead; one "ok"/"FAILED" line per block, a unified diff
                               per drifted block; exit 1 on drift
    links FILE...              every relative link [text](path#anchor) to a file or heading in
                               the repository resolves; one "ok"/"FAILED" line per file
    sql FILE OUTDIR            write each ```sql block of FILE to OUTDIR/<k>.sql with a first
                               line "-- <file>:<line> <annotation>"; the annotation is the text
                               of an "<!-- sql: ... -->" comment right above the block
                               ("skip", or "error <SQLSTATE>"), else "run"
"""
import difflib
import os
import re
import sys

MARK_OPEN = re.compile(r'^<!-- diagram: (saga\.(?:diagram|flow_diagram|timeline)\(.*\)) -->\s*$')
MARK_CLOSE = re.compile(r'^<!-- /diagram -->\s*$')


def blocks(path):
    """[(start, end, expr)]: line indexes of the opening and closing markers"""
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    found, i = [], 0
    while i < len(lines):
        m = MARK_OPEN.match(lines[i])
        if m:
            for j in range(i + 1, len(lines)):
                if MARK_CLOSE.match(lines[j]):
                    found.append((i, j, m.group(1)))
                    i = j
                    break
                if MARK_OPEN.match(lines[j]):
                    sys.exit(f'{path}:{i + 1}: diagram marker not closed')
            else:
                sys.exit(f'{path}:{i + 1}: diagram marker not closed')
        elif lines[i].startswith('<!-- diagram:'):
            sys.exit(f'{path}:{i + 1}: malformed diagram marker: {lines[i]}')
        i += 1
    return lines, found


def fenced(output):
    output = output.rstrip('\n')
    lang = 'dot' if output.startswith('digraph') else 'mermaid'
    return ['```' + lang] + output.split('\n') + ['```']


def cmd_list(files):
    for path in files:
        for _, _, expr in blocks(path)[1]:
            print(f'{path}\t{expr}')


def cmd_apply_check(outdir, files, check):
    k, drift = 0, 0
    for path in files:
        lines, found = blocks(path)
        new = list(lines)
        pieces = []
        for start, end, expr in found:
            with open(os.path.join(outdir, f'{k}.out'), encoding='utf-8') as f:
                body = fenced(f.read())
            old = lines[start + 1:end]
            name = f'{path}: {expr}'
            if old == body:
                print(f'ok     {name}')
            else:
                drift += 1
                if check:
                    print(f'FAILED {name}: differs from what the function returns now')
                    for d in difflib.unified_diff(old, body, f'{path} (committed)',
                                                  f'{expr} (now)', lineterm=''):
                        print('    ' + d)
                else:
                    print(f'wrote  {name}')
            pieces.append((start, end, body))
            k += 1
        for start, end, body in reversed(pieces):   # from the end: earlier indexes stay valid
            new[start + 1:end] = body
        if not check and new != lines:
            with open(path, 'w', encoding='utf-8') as f:
                f.write('\n'.join(new))
    if check and drift:
        print(f'{drift} block(s) drifted: run bash scripts/docs-diagrams.sh and commit the result')
        return 1
    return 0


def slug(heading, seen):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens"""
    text = re.sub(r'`|\*\*|\*|<[^>]+>', '', heading.strip())
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
    s = re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')
    n = seen.get(s, 0)
    seen[s] = n + 1
    return s if n == 0 else f'{s}-{n}'


def anchors(path, cache={}):
    if path not in cache:
        seen, result, fence = {}, set(), False
        with open(path, encoding='utf-8') as f:
            for line in f:
                if line.lstrip().startswith('```'):
                    fence = not fence
                elif not fence:
                    m = re.match(r'^(#{1,6})\s+(.*?)\s*#*\s*$', line)
                    if m:
                        result.add(slug(m.group(2), seen))
        cache[path] = result
    return cache[path]


LINK = re.compile(r'(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+"[^"]*")?\)')


def cmd_links(files):
    bad_files = 0
    for path in files:
        bad, count, fence = [], 0, False
        with open(path, encoding='utf-8') as f:
            for lineno, line in enumerate(f, 1):
                if line.lstrip().startswith('```'):
                    fence = not fence
                    continue
                if fence:
                    continue
                for target in LINK.findall(re.sub(r'`[^`]*`', '', line)):
                    if re.match(r'^[a-z][a-z0-9+.-]*:', target):
                        continue        # http:, https:, mailto:
                    count += 1
                    file_part, _, anchor = target.partition('#')
                    dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
                        if file_part else path
                    if not os.path.exists(dest):
                        bad.append(f'{path}:{lineno}: {target}: no file {dest}')
                    elif anchor and (not dest.endswith('.md') or anchor not in anchors(dest)):
                        bad.append(f'{path}:{lineno}: {target}: no heading #{anchor} in {dest}')
        if bad:
            bad_files += 1
            print(f'FAILED links in {path}: {len(bad)} of {count} do not resolve')
            for b in bad:
                print('    ' + b)
        else:
            print(f'ok     links in {path}: {count} relative links resolve')
    return 1 if bad_files else 0


def cmd_sql(path, outdir):
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    k, i, note = 0, 0, None
    while i < len(lines):
        m = re.match(r'^<!-- sql: (.*?) -->\s*$', lines[i])
        if m:
            note = m.group(1)
        elif lines[i].strip() == '```sql':
            j = i + 1
            while not lines[j].strip().startswith('```'):
                j += 1
            with open(os.path.join(outdir, f'{k}.sql'), 'w', encoding='utf-8') as out:
                out.write(f'-- {path}:{i + 1} {note or "run"}\n')
                out.write('\n'.join(lines[i + 1:j]) + '\n')
            k += 1
            note, i = None, j
        elif lines[i].strip():
            note = None
        i += 1
    print(k)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == 'list':
        cmd_list(args)
    elif cmd in ('apply', 'check'):
        return cmd_apply_check(args[0], args[1:], cmd == 'check')
    elif cmd == 'links':
        return cmd_links(args)
    elif cmd == 'sql':
        cmd_sql(args[0], args[1])
    else:
        sys.exit(__doc__)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
