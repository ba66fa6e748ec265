"""(commands are added here by their issue)"""
import typer


def register(app: typer.Typer) -> None:
    return None
