"""ipsecsa.packet"""
