"""_environments"""
