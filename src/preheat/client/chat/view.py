"""What ``preheat chat`` reads and shows: replies on stdout; the prompt, footers, notices
and errors on stderr (so ``preheat chat < questions > answers`` keeps only the replies).
Colours and line editing on a terminal, plain lines on a pipe."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from rich.console import Console

PROMPT = "[bold green]you>[/] "


@dataclass
class ChatView:
    out: Console
    err: Console
    interactive: bool  # stdin is a terminal: show a prompt, edit lines

    @classmethod
    def for_this_process(cls) -> ChatView:
        interactive = sys.stdin.isatty()
        if interactive:
            import readline  # noqa: F401  (importing it gives input() editing and history)
        return cls(Console(soft_wrap=True, markup=False, emoji=False, highlight=False),
                   Console(stderr=True, soft_wrap=True, emoji=False, highlight=False), interactive)

    def greet(self, model: str, base_url: str) -> None:
        if self.interactive:
            self.err.print(f"[bold]preheat chat[/] with {model} at {base_url}. "
                           "quit, exit or Ctrl-D leaves; Ctrl-C stops a reply.", style="dim")

    def read_turn(self) -> str | None:
        """The next line the user wrote; None at the end of input."""
        try:
            if self.interactive:
                return self.err.input(PROMPT)
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None
        except EOFError:  # Ctrl-D: end the prompt's line before the shell's comes
            self.err.print()
            return None
        except KeyboardInterrupt:  # at the prompt it clears the line, as in a shell
            self.err.print()
            return ""

    def reply_text(self, text: str) -> None:
        self.out.print(text, end="", style="cyan")
        self.out.file.flush()  # a piped stdout is block-buffered: show each token as it comes

    def end_reply(self) -> None:
        self.out.print()

    def footer(self, line: str) -> None:
        self.err.print(line, style="dim", markup=False)

    def error(self, text: str) -> None:
        self.err.print(text, style="bold red", markup=False)
