"""The only part of the package that imports streamlit: cached resources, state keys, widgets."""
